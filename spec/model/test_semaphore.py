"""Semaphore rows (reference §7 items 59–65): incr with and without wake, set times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import ubid
from model import Semaphore, semaphore
from spec.support import strands


async def test_incr_for_a_missing_strand_returns_none_and_writes_nothing(
        engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        assert await semaphore.incr(connection, ubid.generate(ubid.TYPE_STRAND), "x") is None
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore") == 0


@pytest.mark.parametrize("name", [None, "", 3])
async def test_incr_with_an_invalid_name_raises(engine: AsyncEngine, name: object) -> None:
    strand_id = await strands.create(engine, "napper")
    async with engine.begin() as connection:
        with pytest.raises(TypeError, match="semaphore name"):
            await semaphore.incr(connection, strand_id, name)  # type: ignore[arg-type]


async def test_incr_keeps_an_overdue_strand_at_its_place(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper", schedule_sql="now() - interval '1 hour'")
    async with engine.begin() as connection:
        await semaphore.incr(connection, strand_id, "x")
    due = (await strands.row(engine, strand_id)).due_in
    assert timedelta(hours=-1, seconds=-1) < due < timedelta(minutes=-59)


async def test_incr_without_wake_leaves_a_future_schedule(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper", schedule_sql="now() + interval '1 hour'")
    async with engine.begin() as connection:
        assert await semaphore.incr(connection, strand_id, "x", wake=False) is not None
    assert (await strands.row(engine, strand_id)).due_in > timedelta(minutes=59)


async def test_incr_pulls_a_future_schedule_to_now(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper", schedule_sql="now() + interval '1 hour'")
    async with engine.begin() as connection:
        await semaphore.incr(connection, strand_id, "x")
    assert timedelta(seconds=-1) < (await strands.row(engine, strand_id)).due_in <= timedelta(0)


async def test_set_at_is_the_creation_time_to_the_millisecond(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper")
    before = datetime.now(UTC)
    async with engine.begin() as connection:
        new_id = await semaphore.incr(connection, strand_id, "x")
    assert new_id is not None
    row = Semaphore(id=new_id, strand_id=strand_id, name="x")
    assert abs((row.set_at - before).total_seconds()) < 1
    assert row.set_at.tzinfo is not None and row.set_at.microsecond % 1000 == 0


async def test_decr_all_removes_every_row_of_the_name(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper")
    async with engine.begin() as connection:
        for name in ("x", "x", "y"):
            await semaphore.incr(connection, strand_id, name)
        await semaphore.decr_all(connection, strand_id, "x")
    assert await strands.scalar(engine, "SELECT string_agg(name, ',') FROM semaphore") == "y"
