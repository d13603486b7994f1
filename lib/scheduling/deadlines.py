"""The engine's side of deadlines: a reached target resolves its page, an expired one pages.

A frame's deadline lives in its keys `deadline_target`, `deadline_at`, `deadline_start`,
`deadline_page` and `deadline_notified`. Progs register them (prog/base.py); the engine checks
them before every step and shortens naps so that an expiry is noticed on time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lib import ubid
from lib.log import get_logger
from lib.scheduling import timefmt

KEYS = ("deadline_target", "deadline_at", "deadline_start", "deadline_page", "deadline_notified")
log = get_logger(__name__)


def page_tag(strand_id: uuid.UUID, prog: str, target: str | None) -> list[Any]:
    return ["Deadline", str(strand_id), prog, target]


@dataclass(frozen=True)
class Expired:
    frame_index: int
    prog: str  # the prog that owns the frame
    target: str | None


def reached(stack: list[dict[str, Any]], label: str) -> str | None:
    """The target the top frame has just reached, if any."""
    top = stack[0]
    target = top.get("deadline_target")
    return target if "deadline_at" in top and target == label else None


def expired(stack: list[dict[str, Any]], prog: str, at: datetime) -> list[Expired]:
    """Frames whose deadline passed before `at` and that have not paged yet."""
    found = []
    owner = prog
    for index, frame in enumerate(stack):
        deadline = frame.get("deadline_at")
        if deadline and not frame.get("deadline_notified") and at > timefmt.read(deadline):
            found.append(Expired(index, owner, frame.get("deadline_target")))
        link = frame.get("link")
        if isinstance(link, list) and link:
            owner = str(link[0])
    return found


def summary(strand_id: uuid.UUID, item: Expired, label: str) -> str:
    return (f"{ubid.to_ubid(strand_id)} has an expired deadline! "
            f"{item.prog}.{label} did not reach {item.target} on time")


def clamp_nap(stack: list[dict[str, Any]], seconds: float, at: datetime) -> float:
    """Shorten a nap so the strand wakes just after its nearest unnotified deadline."""
    if seconds == 0:
        return seconds
    pending = [timefmt.read(f["deadline_at"]) for f in stack
               if f.get("deadline_at") and not f.get("deadline_notified")]
    if not pending:
        return seconds
    remaining = max(0.0, (min(pending) - at).total_seconds())
    return min(seconds, remaining + 0.001)
