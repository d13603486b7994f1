"""`Test.Hopper`: the no-op prog of the engine benchmark — no semaphores, no subject, no I/O."""

from __future__ import annotations

from prog.base import Prog, label


class Hopper(Prog):
    @label
    async def bounce(self) -> None:
        """Hop to itself `hops` times (default 10), then exit."""
        done = int(self.frame.get("n", 0)) + 1
        if done >= int(self.frame.get("hops", 10)):
            self.pop({"hops": done})
        self.frame_set("n", done)
        self.hop(self.bounce)
