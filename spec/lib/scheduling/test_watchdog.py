"""The watchdog thread: fires on an overrunning step or a stalled event loop, dumps, exits 2."""

from __future__ import annotations

import asyncio
import io
import threading
import time

from lib.scheduling.watchdog import EXIT_STATUS, Watchdog


def recording_watchdog(**limits: float) -> tuple[Watchdog, list[int], io.StringIO, threading.Event]:
    exits: list[int] = []
    fired = threading.Event()
    out = io.StringIO()

    def exit_(status: int) -> None:
        exits.append(status)
        fired.set()

    watchdog = Watchdog(step_timeout=limits.get("step", 60),
                        loop_block_limit=limits.get("loop", 60), interval=0.05, out=out,
                        exit=exit_)
    return watchdog, exits, out, fired


async def test_a_step_that_finishes_in_time_does_not_fire() -> None:
    watchdog, exits, _, _ = recording_watchdog(step=5)
    watchdog.start()
    watchdog.begin("worker", "stabc")
    await asyncio.sleep(0.2)
    watchdog.end("worker")
    await asyncio.sleep(0.1)
    watchdog.stop()
    assert exits == [] and watchdog.check() is None


async def test_an_overrunning_step_dumps_and_exits_2() -> None:
    watchdog, exits, out, fired = recording_watchdog(step=0.1)
    watchdog.start()
    watchdog.begin("worker", "stoverrun")
    assert await asyncio.to_thread(fired.wait, 5)
    watchdog.stop()
    assert exits == [EXIT_STATUS]
    dump = out.getvalue()
    assert "--BEGIN THREAD DUMP" in dump and "strand stoverrun ran" in dump
    assert "--END THREAD DUMP" in dump and "task watchdog-ticker" in dump


async def test_a_blocked_event_loop_is_noticed_from_the_thread() -> None:
    watchdog, exits, out, fired = recording_watchdog(loop=0.2)
    watchdog.start()
    time.sleep(0.6)  # noqa: ASYNC251 - blocks the loop on purpose: only the thread can see it
    assert fired.wait(5)
    watchdog.stop()
    assert exits == [EXIT_STATUS] and "event loop blocked" in out.getvalue()
