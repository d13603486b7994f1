"""bin/api as a real process for tests and benchmarks: uvicorn on a free local port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from spec.support.processes import ROOT, measured_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Served:
    base: str  # the URL to send requests to
    process: subprocess.Popen[bytes]  # uvicorn's supervisor when --workers > 1


@contextmanager
def api_server(database_url: str, log: Path, *args: str) -> Iterator[Served]:
    """Run bin/api against `database_url`; yields it once it answers.

    It runs in a session of its own, so that afterwards every process of it (workers
    included) goes, whatever state the supervisor is in.
    """
    port = free_port()
    env = {**measured_env(), "DATABASE_URL": database_url, "LOG_FORMAT": "json"}
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, str(ROOT / "bin" / "api"), "--port",
                                   str(port), *args], stdout=output, stderr=output, env=env,
                                  start_new_session=True)
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
        yield Served(base, server)
    finally:
        server.terminate()
        if not _exited_unreaped(server.pid, 10):
            server.kill()
        # While the supervisor is an unreaped zombie its pid cannot name another group.
        with suppress(ProcessLookupError):  # workers the supervisor did not stop
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _exited_unreaped(pid: int, seconds: float) -> bool:
    """Whether the child `pid` exits within `seconds`; it is left for `wait` to reap."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # the test reaped it already
            return True
        time.sleep(0.05)
    return False
