"""`semaphore`: a named signal addressed to a strand; set while at least one row exists."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import ubid
from model.base import Base

# Wakes never demote an overdue strand and always write a value strictly smaller than the
# current one, so a nap's compare-and-set on `schedule` notices every wake.
WAKE_SCHEDULE_SQL = "LEAST(schedule, now()) - interval '1 microsecond'"

_INCR_WAKE = text(
    f"WITH woken AS (UPDATE strand SET schedule = {WAKE_SCHEDULE_SQL} WHERE id = :strand_id"
    " RETURNING id)"
    " INSERT INTO semaphore (id, strand_id, name) SELECT :id, id, :name FROM woken RETURNING id"
)
_INCR_QUIET = text(
    "INSERT INTO semaphore (id, strand_id, name)"
    " SELECT :id, id, :name FROM strand WHERE id = :strand_id RETURNING id"
)


class Semaphore(Base):
    __tablename__ = "semaphore"

    # Time-ordered ids: the id says when the signal was set.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    strand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("strand.id"), index=True)
    name: Mapped[str] = mapped_column(String(collation="C"))

    @property
    def set_at(self) -> datetime:
        return ubid.time_of(self.id)


async def incr(connection: AsyncConnection, strand_id: uuid.UUID, name: str, *,
               wake: bool = True) -> uuid.UUID | None:
    """Signal `name` to a strand; wake it unless `wake` is false.

    Returns the new semaphore's id, or None when no such strand exists (nothing is written).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a semaphore name is a non-empty string, got {name!r}")
    statement = _INCR_WAKE if wake else _INCR_QUIET
    params = {"id": ubid.generate_from_time(ubid.TYPE_SEMAPHORE), "strand_id": strand_id,
              "name": name}
    return (await connection.execute(statement, params)).scalar_one_or_none()


async def decr_all(connection: AsyncConnection, strand_id: uuid.UUID, name: str) -> None:
    """Clear `name` for a strand: every row with that name goes."""
    await connection.execute(
        text("DELETE FROM semaphore WHERE strand_id = :strand_id AND name = :name"),
        {"strand_id": strand_id, "name": name},
    )
