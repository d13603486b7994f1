"""`Test`: a prog whose labels exercise every engine behaviour, driven from plain strand rows."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

from sqlalchemy import text

from lib.log import get_logger
from model import semaphore
from prog.base import FrameField, Prog, current_label, label

log = get_logger(__name__)


class Test(Prog):
    __test__ = False  # a prog, not a pytest class
    semaphores = ("test_semaphore", "destroy")
    test_level = FrameField()

    # -- engine basics ---------------------------------------------------------------------

    @label
    async def start(self) -> None:
        """Ends without flow control: the engine must refuse it."""

    @label
    async def hop_entry(self) -> None:
        self.hop(self.hop_exit)

    @label
    async def hop_exit(self) -> None:
        self.pop({"msg": "hop finished"})

    @label
    async def napper(self) -> None:
        self.nap(123)

    @label
    async def short_napper(self) -> None:
        self.nap(12)

    @label
    async def popper(self) -> None:
        self.pop({"msg": "popped"})

    @label
    async def failer(self) -> None:
        raise RuntimeError("test failer failed")

    @label
    async def swallower(self) -> None:
        """A label that catches Exception must still not swallow flow control."""
        try:
            self.hop(self.popper)
        except Exception:
            self.nap(999)

    @label
    async def counter(self) -> None:
        """Nap 0 twice, then pop: three steps under one lease when the budget allows."""
        count = int(self.frame.get("count", 0)) + 1
        self.frame_set("count", count)
        if count >= 3:
            self.pop({"count": count})
        self.nap(0)

    @label
    async def sleeper(self) -> None:
        await asyncio.sleep(float(self.frame.get("seconds", 1.2)))
        self.nap(60)

    @label
    async def frame_writer_failer(self) -> None:
        self.frame_set("written", True)
        await self.incr("test_semaphore")
        raise RuntimeError("after writing")

    @label
    async def hibernator(self) -> None:
        self.hibernate()

    # -- push and pop ----------------------------------------------------------------------

    @label
    async def pusher1(self) -> None:
        if self.retval:
            self.pop("1")
        self.push(Test, {"test_level": "2"}, "pusher2")

    @label
    async def pusher2(self) -> None:
        if self.retval:
            self.pop(self.test_level)
        self.push(Test, {"test_level": "3"}, self.pusher3)

    @label
    async def pusher3(self) -> None:
        self.pop(self.test_level)

    @label
    async def push_subject(self) -> None:
        self.push(Test, {"subject_id": self.frame["other_subject"]}, self.popper)

    @label
    async def pop_nothing(self) -> None:
        self.pop(None)  # type: ignore[arg-type]

    @label
    async def hop_string(self) -> None:
        self.hop("hop_exit")  # type: ignore[arg-type]

    @label
    async def hop_undeclared(self) -> None:
        self.hop(self.not_a_label)

    async def not_a_label(self) -> None:
        """A plain method: not a valid hop target."""

    @label
    async def current_prog_reporter(self) -> None:
        self.pop({"current": self.callee_find_current_prog()})

    def callee_find_current_prog(self) -> str | None:
        return current_label()

    # -- children --------------------------------------------------------------------------

    async def _bud_then_reap(self, *labels: str) -> None:
        for name in labels:
            await self.bud(Test, {}, name)
        self.hop(self.reaper)

    @label
    async def budder(self) -> None:
        await self._bud_then_reap("popper")

    @label
    async def bud_short_napper(self) -> None:
        await self._bud_then_reap("short_napper")

    @label
    async def bud_short_nappers(self) -> None:
        await self._bud_then_reap("short_napper", "short_napper")

    @label
    async def bud_napper(self) -> None:
        await self._bud_then_reap("napper")

    @label
    async def bud_failer(self) -> None:
        await self._bud_then_reap("failer")

    @label
    async def bud_popper_and_failer(self) -> None:
        await self._bud_then_reap("popper", "failer")

    @label
    async def reaper(self) -> None:
        await self.reap(self.reaped, reaper=self._reaped_one)

    async def _reaped_one(self, child: Any) -> None:
        log.info("reaped child", child=str(child.id), exitval=child.exitval)

    @label
    async def reaped(self) -> None:
        self.pop({"msg": "reaped"})

    @label
    async def reap_exit_no_children(self) -> None:
        async def done() -> None:
            self.pop({"msg": "reap_exit_no_children"})

        await self.reap(when_done=done)

    # -- semaphores ------------------------------------------------------------------------

    @label
    async def increment_semaphore(self) -> None:
        await self.incr("test_semaphore")
        self.nap(1)

    @label
    async def decrement_semaphore(self) -> None:
        await self.decr("test_semaphore")
        self.nap(1)

    @label
    async def late_signal_napper(self) -> None:
        await semaphore.incr(self.connection, self.strand_id, "late_signal")
        self.nap(123)

    @label
    async def undeclared_semaphore(self) -> None:
        self.nap(1 if self.is_set("late_signal") else 2)

    @label
    async def snap_signal_napper(self) -> None:
        await self.incr("test_semaphore")
        self.nap(123)

    # -- deadlines -------------------------------------------------------------------------

    @label
    async def set_expired_deadline(self) -> None:
        self.register_deadline(self.pusher2, -1)
        self.hop(self.pusher1)

    @label
    async def set_expired_deadline_no_page(self) -> None:
        self.register_deadline(self.pusher2, -1, page=False)
        self.hop(self.napper)

    @label
    async def set_far_deadline_napper(self) -> None:
        self.register_deadline(self.popper, float(self.frame.get("deadline_in", 5)))
        self.nap(123)

    @label
    async def set_popping_deadline(self) -> None:
        """Register an already-expired deadline in this frame, then pop on the next step."""
        self.register_deadline(self.pusher2, -1)
        self.hop(self.popper)

    @label
    async def push_popping_deadline(self) -> None:
        if self.retval:
            self.nap(123)
        self.push(Test, {}, self.set_popping_deadline)

    @label
    async def bud_popping_deadline(self) -> None:
        await self._bud_then_reap("set_popping_deadline")

    @label
    async def reach_deadline_target(self) -> None:
        self.register_deadline(self.hop_exit, -1)
        self.hop(self.napper)

    @label
    async def go_to_hop_exit(self) -> None:
        self.hop(self.hop_exit)

    @label
    async def switch_deadline_target(self) -> None:
        self.register_deadline(self.popper, 60)
        self.hop(self.napper)

    @label
    async def unregister_popper_deadline(self) -> None:
        self.unregister_deadline(self.popper)
        self.nap(123)

    @label
    async def push_test2_with_deadline(self) -> None:
        """Lower frame (Test) deadline t2=pusher3; the Test2 frame above registers t1."""
        from prog.test.test2 import Test2

        self.register_deadline(self.pusher3, -1)
        self.push(Test2, {}, Test2.deadline_then_push)

    # -- destroy ---------------------------------------------------------------------------

    @label
    async def destroy(self) -> None:
        self.pop("destroyed")

    # -- respirate: many strands through the daemon ----------------------------------------

    @label
    async def counted_hopper(self) -> None:
        """Like Test.Hopper, but every step records itself in `test_step_log` (a table the tests
        create), in the step's transaction: a step committed twice shows as a duplicate row."""
        done = int(self.frame.get("n", 0)) + 1
        await self.connection.execute(
            text("INSERT INTO test_step_log (strand_id, step) VALUES (:id, :step)"),
            {"id": self.strand_id, "step": done})
        if done >= int(self.frame.get("hops", 10)):
            self.pop({"hops": done})
        self.frame_set("n", done)
        self.nap(float(self.frame.get("nap", 0)))

    @label
    async def paced_napper(self) -> None:
        """Naps between `low` and `high` s forever, printing how late each step started."""
        now = time.time()
        if "due" in self.frame:
            sys.stdout.write(f"late {now - float(self.frame['due']):.6f}\n")
        seconds = random.uniform(float(self.frame["low"]), float(self.frame["high"]))
        self.frame_set("due", now + seconds)
        self.nap(seconds)

    @label
    async def loop_blocker(self) -> None:
        """Blocks the event loop itself: only a watchdog thread can notice."""
        time.sleep(float(self.frame.get("seconds", 30)))  # noqa: ASYNC251 - on purpose
        self.nap(60)

    @label
    async def spinner(self) -> None:
        """Runs forever in zero naps: a run only ends at its budget or at shutdown."""
        self.frame_set("spins", int(self.frame.get("spins", 0)) + 1)
        await asyncio.sleep(0.01)
        self.nap(0)

    # -- smoke: many strands through the daemon (respirate) --------------------------------

    async def _smoke(self, digit: int) -> None:
        if self.is_set("test_semaphore"):
            await self.decr("test_semaphore")
            self.hop(getattr(self, f"smoke_test_{digit - 1}"))
        await self.incr("test_semaphore")
        sys.stdout.write(f"{digit} {self.strand_id}\n")
        sys.stdout.flush()
        os.urandom(64)
        self.nap(random.random())

    @label
    async def smoke_test_3(self) -> None:
        await self._smoke(3)

    @label
    async def smoke_test_2(self) -> None:
        await self._smoke(2)

    @label
    async def smoke_test_1(self) -> None:
        await self._smoke(1)

    @label
    async def smoke_test_0(self) -> None:
        self.nap(1000)
