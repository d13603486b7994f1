"""The in-memory copy of a leased strand row that a run works on."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class StrandState:
    id: uuid.UUID
    parent_id: uuid.UUID | None
    prog: str
    label: str
    stack: list[dict[str, Any]]
    retval: dict[str, Any] | None
    schedule: datetime  # the compare-and-set key of the next nap
    lease: datetime  # the value we wrote when taking the lease: the fence of every commit
    try_: int
    holder: uuid.UUID
    stack_modified: bool = field(default=False)

    def copy_stack(self) -> list[dict[str, Any]]:
        """A copy whose frames can be changed without touching ours (values are shared:
        progs replace frame values through `frame_set`, they do not mutate them)."""
        return [dict(frame) for frame in self.stack]
