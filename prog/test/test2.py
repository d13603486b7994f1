"""`Test.Test2`: a second test prog with only a destroy semaphore and a before-destroy hook."""

from __future__ import annotations

from lib.log import get_logger
from prog.base import Prog, label

log = get_logger(__name__)


class Test2(Prog):
    __test__ = False  # a prog, not a pytest class
    semaphores = ("destroy",)

    async def before_destroy(self) -> None:
        log.info("before_destroy ran", strand=str(self.strand_id))

    @label
    async def start(self) -> None:
        self.nap(123)

    @label
    async def pusher1(self) -> None:
        from prog.test import Test

        self.push(Test, {}, Test.pusher2)

    @label
    async def deadline_then_push(self) -> None:
        from prog.test import Test

        self.register_deadline(self.start, -1)
        self.push(Test, {}, Test.napper)
