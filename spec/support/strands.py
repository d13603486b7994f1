"""Seeding and reading strand rows the way an operator or a test run would: plain SQL."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import ubid
from spec.support.processes import eventually


async def create(engine: AsyncEngine, label: str, *, prog: str = "Test",
                 stack: list[dict[str, Any]] | None = None, parent_id: uuid.UUID | None = None,
                 strand_id: uuid.UUID | None = None, schedule_sql: str = "now()") -> uuid.UUID:
    strand_id = strand_id or ubid.generate(ubid.TYPE_STRAND)
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO strand (id, parent_id, prog, label, stack, schedule) VALUES"
                 f" (:id, :parent_id, :prog, :label, CAST(:stack AS jsonb), {schedule_sql})"),
            {"id": strand_id, "parent_id": parent_id, "prog": prog, "label": label,
             "stack": json.dumps(stack if stack is not None else [{}])})
    return strand_id


async def row(engine: AsyncEngine, strand_id: uuid.UUID) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(
            text("SELECT *, try AS try_, schedule - now() AS due_in, lease > now() AS leased"
                 " FROM strand WHERE id = :id"), {"id": strand_id})).one_or_none()


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar()


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(sql), params)


async def wait_for_lock_waiter(engine: AsyncEngine) -> None:
    """Return once some session of this database waits for a lock (a test's racing step
    has reached its wait)."""
    async def waiting() -> bool:
        return bool(await scalar(engine, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE"
                                 " datname = current_database() AND wait_event_type = 'Lock')"))
    await eventually(waiting, 10, "a session waiting for a lock")
