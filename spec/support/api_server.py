"""bin/api as a real process for tests and benchmarks: uvicorn on a free local port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spec.support.processes import ROOT, measured_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def api_server(database_url: str, log: Path, *args: str) -> Iterator[str]:
    """Run bin/api against `database_url`; yields its base URL once it answers."""
    port = free_port()
    env = {**measured_env(), "DATABASE_URL": database_url, "LOG_FORMAT": "json"}
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, str(ROOT / "bin" / "api"), "--port",
                                   str(port), *args], stdout=output, stderr=output, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/openapi.json", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bin/api did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
