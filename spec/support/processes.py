"""Running bin/respirate as a real process in tests, and waiting on conditions."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import coverage
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


# Membership and watchdog settings short enough for tests to see them act.
QUICK = {"heartbeat_interval": 0.5, "member_stale": 2.0, "holder_stale": 3.0,
         "fence_after": 2.5, "loop_block_limit": 2.0}


def measured_env() -> dict[str, str]:
    """The environment for a child process of ours (bin/ctl, bin/api, the host agent).

    When the suite runs under coverage, the child (and the processes it starts) are measured
    too: coverage's .pth hook starts it from COVERAGE_PROCESS_CONFIG, each writes a parallel
    data file, and pytest-cov combines those at the end, as with coverage's `patch = subprocess`.
    """
    measuring = coverage.Coverage.current()
    if measuring is None:
        return dict(os.environ)
    config = copy.copy(measuring.config)
    config.parallel = True
    return {**os.environ, "COVERAGE_PROCESS_CONFIG": config.serialize()}


class RespirateProcess:
    def __init__(self, database_url: str, log_dir: Path, *args: str,
                 settings: dict[str, object] | None = None) -> None:
        env = {**os.environ, "DATABASE_URL": database_url, "LOG_FORMAT": "json",
               "LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"}
        for name, value in (settings or {}).items():
            env[f"RESPIRATE_{name.upper()}"] = str(value)
        tag = "-".join(a.lstrip("-") for a in args) or "all"
        self.stdout_path = log_dir / f"respirate-{tag}-{time.monotonic_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bin" / "respirate"), *args],
            stdout=self.stdout_path.open("w"), stderr=self.stderr_path.open("w"), env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    found.append(event)
        return found

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def eventually(check: Callable[[], Awaitable[bool]], limit: float = 60,
                     what: str = "condition") -> None:
    """Poll `check` until it holds; fail naming `what` when `limit` seconds pass first. The limit
    only bounds a hang; it is not a speed assertion."""
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit} s")
        await asyncio.sleep(0.1)


@pytest.fixture
def spawn(database_url: str, tmp_path: Path) -> Iterator[Callable[..., RespirateProcess]]:
    """Start bin/respirate processes (QUICK settings unless overridden); killed afterwards."""
    spawned: list[RespirateProcess] = []

    def start(*args: str, url: str | None = None, **settings: object) -> RespirateProcess:
        process = RespirateProcess(url or database_url, tmp_path, *args,
                                   settings={**QUICK, **settings})
        spawned.append(process)
        return process

    yield start
    for process in spawned:
        process.stop()
