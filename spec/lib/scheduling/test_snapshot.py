"""Per-step semaphore snapshots (reference §7 items 66–70)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lib import ubid
from lib.scheduling.snapshot import SemaphoreSnapshot
from model import semaphore
from spec.support import strands


async def raw(connection: AsyncConnection) -> Any:
    return (await connection.get_raw_connection()).driver_connection


async def count(engine: AsyncEngine) -> int:
    return int(await strands.scalar(engine, "SELECT count(*) FROM semaphore"))


async def test_deferred_decr_deletes_when_flushed_only_what_it_saw(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper")
    async with engine.connect() as connection:
        snapshot = await SemaphoreSnapshot(
            connection, await raw(connection), strand_id).load()
        assert await snapshot.incr("a") is not None
        await connection.commit()
        assert snapshot.is_set("a") and await count(engine) == 1
        await snapshot.decr("a")
        await snapshot.decr("a")  # harmless
        assert not snapshot.is_set("a")
        async with engine.begin() as other:  # arrives after the snapshot: must survive
            await semaphore.incr(other, strand_id, "a")
        assert await count(engine) == 2
        await snapshot.flush()
        await connection.commit()
    assert await count(engine) == 1
    async with engine.connect() as connection:
        again = await SemaphoreSnapshot(connection, await raw(connection), strand_id).load()
        assert again.is_set("a")


async def test_non_deferred_decr_deletes_at_once(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper")
    async with engine.begin() as connection:
        await semaphore.incr(connection, strand_id, "a")
    async with engine.connect() as connection:
        snapshot = await SemaphoreSnapshot(
            connection, await raw(connection), strand_id, deferred=False).load()
        await snapshot.decr("a")
        await connection.commit()
    assert await count(engine) == 0


async def test_a_new_snapshot_sees_existing_rows(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper")
    async with engine.begin() as connection:
        await semaphore.incr(connection, strand_id, "a")
        snapshot = await SemaphoreSnapshot(
            connection, await raw(connection), strand_id).load()
    assert snapshot.is_set("a") and not snapshot.is_set("b")


async def test_snapshot_incr_for_a_deleted_strand_returns_none(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        snapshot = SemaphoreSnapshot(
            connection, await raw(connection), ubid.generate(ubid.TYPE_STRAND))
        assert await snapshot.incr("a") is None
        assert not snapshot.is_set("a")


async def test_set_at_is_none_when_unset_and_the_earliest_otherwise(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper")
    old = ubid.generate_from_time(ubid.TYPE_SEMAPHORE, at=None)
    backdated = ubid.from_parts((old.int >> 80) - 65_000, "sm", 0, 7)
    async with engine.begin() as connection:
        await semaphore.incr(connection, strand_id, "a")
    await strands.execute(engine, "INSERT INTO semaphore (id, strand_id, name) VALUES"
                          " (:id, :strand_id, 'a')", id=backdated, strand_id=strand_id)
    async with engine.connect() as connection:
        snapshot = await SemaphoreSnapshot(
            connection, await raw(connection), strand_id).load()
    assert snapshot.set_at("b") is None
    set_at = snapshot.set_at("a")
    assert set_at == ubid.time_of(backdated)
    assert set_at is not None and ubid.time_of(old) - set_at == timedelta(seconds=65)
