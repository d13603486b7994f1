"""Ends the process from an OS thread when a step overruns or the event loop stops turning.

A coroutine that blocks the event loop cannot time itself out, so the check runs in a thread.
It fires well before other processes would judge us gone and reclaim our leases; firing dumps
every thread and asyncio task to stderr and exits with status 2, without cleanup.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TextIO

EXIT_STATUS = 2


def dump(loop: asyncio.AbstractEventLoop | None, reason: str, out: TextIO) -> None:
    out.write(f"--BEGIN THREAD DUMP, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: "
              f"{reason}\n")
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"thread {names.get(ident, ident)}:\n")
        out.write("".join(traceback.format_stack(frame)))
    if loop is not None:
        for _ in range(3):  # the loop's task set may change under us: try again
            try:
                tasks = list(asyncio.all_tasks(loop))
                break
            except RuntimeError:
                tasks = []
        for task in tasks:
            out.write(f"task {task.get_name()}:\n")
            task.print_stack(file=out)
    out.write("--END THREAD DUMP\n")
    out.flush()


class Watchdog:
    def __init__(self, *, step_timeout: float, loop_block_limit: float,
                 interval: float = 0.25, out: TextIO | None = None,
                 exit: Callable[[int], None] = os._exit) -> None:
        self.step_timeout = step_timeout
        self.loop_block_limit = loop_block_limit
        self.interval = interval
        self.out = out or sys.stderr
        self._exit = exit
        self._steps: dict[object, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._tick = time.monotonic()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.fired: str | None = None

    def begin(self, key: object, name: str) -> None:
        with self._lock:
            self._steps[key] = (name, time.monotonic())

    def end(self, key: object) -> None:
        with self._lock:
            self._steps.pop(key, None)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tick = time.monotonic()
        self._ticker = asyncio.create_task(self._turn(), name="watchdog-ticker")
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._thread is not None:
            self._thread.join(timeout=2)

    async def _turn(self) -> None:
        while True:
            self._tick = time.monotonic()
            await asyncio.sleep(self.interval)

    def check(self) -> str | None:
        """Why the watchdog must fire now, or None."""
        now = time.monotonic()
        if now - self._tick > self.loop_block_limit:
            return f"event loop blocked for {now - self._tick:.1f} s"
        with self._lock:
            for name, started in self._steps.values():
                if now - started > self.step_timeout:
                    return f"strand {name} ran {now - started:.1f} s"
        return None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            reason = self.check()
            if reason is not None:
                self.fired = reason
                try:
                    dump(self._loop, reason, self.out)
                finally:  # a failed dump must not keep the process alive
                    self._exit(EXIT_STATUS)
                return
