"""bin/api: it refuses to start without what it needs, and its worker processes never
outlive it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from spec.support.api_server import api_server
from spec.support.processes import ROOT


def test_bin_api_refuses_to_start_without_a_master_key(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IMAGECP_MASTER_KEY"}
    result = subprocess.run([sys.executable, str(ROOT / "bin" / "api"), "--port", "1"],
                            env={**env, "DATABASE_URL": database_url}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "api: IMAGECP_MASTER_KEY is not set: it must hold 32 random bytes in base64"
        " (bin/ctl master-key prints a new one)"]


def _children(pid: int) -> set[int]:
    return {int(child) for child in
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_bin_api_workers_exit_when_their_supervisor_is_killed_outright(
        database_url: str, tmp_path: Path) -> None:
    with api_server(database_url, tmp_path / "api.log", "--workers", "2") as served:
        workers = _children(served.process.pid)
        assert len(workers) >= 2 and all(map(_running, workers))
        served.process.kill()
        served.process.wait()
        deadline = time.monotonic() + 20
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, workers)), (tmp_path / "api.log").read_text()
