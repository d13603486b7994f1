"""The semaphores a strand saw at the start of a step.

`decr` deletes exactly the rows the snapshot saw, so a signal that arrives while the step
runs survives it and is seen by the next step. In deferred mode (the engine's) the deletes
are issued once, when the step applies its outcome, inside the step's transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from lib import ubid
from model import semaphore

_LOAD = "SELECT id, name FROM semaphore WHERE strand_id = $1 ORDER BY id"
_DELETE = "DELETE FROM semaphore WHERE strand_id = $1 AND id = ANY($2::uuid[])"


class SemaphoreSnapshot:
    """Reads and deletes through asyncpg (`raw`); signals through SQLAlchemy (`connection`),
    which opens the step's deferred transaction."""

    def __init__(self, connection: AsyncConnection, raw: asyncpg.Connection,
                 strand_id: uuid.UUID, *, deferred: bool = True) -> None:
        self._connection = connection
        self._raw = raw
        self._strand_id = strand_id
        self._deferred = deferred
        self._ids: dict[str, list[uuid.UUID]] = {}
        self._pending: list[uuid.UUID] = []

    async def load(self) -> SemaphoreSnapshot:
        self._ids = {}
        for row in await self._raw.fetch(_LOAD, self._strand_id):
            self._ids.setdefault(row["name"], []).append(row["id"])
        return self

    def is_set(self, name: str) -> bool:
        return name in self._ids

    def set_at(self, name: str) -> datetime | None:
        """When `name` was first set (the earliest of its rows), or None when unset."""
        ids = self._ids.get(name)
        return ubid.time_of(min(ids)) if ids else None

    async def incr(self, name: str) -> uuid.UUID | None:
        """Set `name` without waking the strand (a prog must not cancel its own nap)."""
        new_id = await semaphore.incr(self._connection, self._strand_id, name, wake=False)
        if new_id is not None:
            self._ids.setdefault(name, []).append(new_id)
        return new_id

    async def decr(self, name: str) -> None:
        ids = self._ids.pop(name, [])
        if not ids:
            return
        if self._deferred:
            self._pending.extend(ids)
        else:
            await self._delete(ids)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    async def flush(self) -> None:
        """Issue the deferred deletes."""
        if self._pending:
            ids, self._pending = self._pending, []
            await self._delete(ids)

    async def _delete(self, ids: list[uuid.UUID]) -> None:
        await self._raw.execute(_DELETE, self._strand_id, ids)
