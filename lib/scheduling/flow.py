"""What a step ends with, and the errors the engine raises.

A label ends by raising `FlowControl` (derived from BaseException, so prog code that catches
`Exception` cannot swallow it) carrying one outcome: Hop, Nap or Exit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from lib import ubid


@dataclass(frozen=True)
class Outcome:
    """Base of the step outcomes."""


@dataclass(frozen=True)
class Hop(Outcome):
    """Continue at another label (and, for push/pop, another prog and stack)."""

    from_prog: str
    from_label: str
    prog: str
    label: str
    stack: list[dict[str, Any]]
    retval: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"hop {self.from_prog}#{self.from_label} -> {self.prog}#{self.label}"


@dataclass(frozen=True)
class Nap(Outcome):
    """Sleep `seconds` (0: run again right away, under the same lease)."""

    seconds: float

    def __str__(self) -> str:
        return f"nap for {self.seconds:g} seconds"


@dataclass(frozen=True)
class ChildFailed(Nap):
    """A child run by `reap` failed: the parent naps, then its run re-raises the child's error."""

    error: BaseException = field(default_factory=Exception)

    def __str__(self) -> str:
        return (f"error running child strand: {type(self.error).__name__}: {self.error}, "
                f"nap for {self.seconds:g} seconds")


@dataclass(frozen=True)
class Exit(Outcome):
    """The strand is done; `value` becomes its exitval."""

    prog: str
    label: str
    value: dict[str, Any]

    def __str__(self) -> str:
        return f"Strand exits from {self.prog}#{self.label} with {self.value}"


class FlowControl(BaseException):
    """Raised by hop/nap/pop/push to end a label; caught only by the engine."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(str(outcome))
        self.outcome = outcome


class EngineBug(Exception):
    """A misuse the engine refuses (bad hop target, no flow control, …); message starts BUG:."""


class MalformedStrand(Exception):
    """A strand row that cannot run: unknown prog or label, or a malformed stack."""

    def __init__(self, strand_id: uuid.UUID, reason: str) -> None:
        super().__init__(f"strand {ubid.to_ubid(strand_id)} cannot run: {reason}")
        self.strand_id = strand_id


class LeaseLost(Exception):
    """Our lease was taken over or edited while we ran; the step's writes are rolled back."""

    def __init__(self, strand_id: uuid.UUID) -> None:
        super().__init__(f"BUG: lease violated for strand {ubid.to_ubid(strand_id)}")
        self.strand_id = strand_id


class StrandFailed(Exception):
    """A step raised; already logged. Names the strand that failed (a child, under `reap`)."""

    def __init__(self, strand_id: uuid.UUID, cause: BaseException) -> None:
        super().__init__(f"strand {ubid.to_ubid(strand_id)} failed: "
                         f"{type(cause).__name__}: {cause}")
        self.strand_id = strand_id
        self.__cause__ = cause
