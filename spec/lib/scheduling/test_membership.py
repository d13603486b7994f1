"""Membership: partition ranges, and live processes seen through heartbeats (real database)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib.config import normalize_database_url
from lib.scheduling.membership import MAX_UUID, Membership, partition_range, view_of
from lib.scheduling.respirate import raw_dsn
from spec.support import strands
from spec.support.processes import eventually


def bounds(rank: int, count: int) -> tuple[str, str]:
    low, high = partition_range(rank, count)
    return str(low)[:8], str(high)[:8]


def test_two_partitions_split_at_80000000() -> None:
    assert partition_range(0, 2) == (uuid.UUID(int=0),
                                     uuid.UUID("7fffffff-ffff-ffff-ffff-ffffffffffff"))
    assert partition_range(1, 2) == (uuid.UUID("80000000-0000-0000-0000-000000000000"), MAX_UUID)


def test_three_and_eight_partitions_use_the_reference_boundaries() -> None:
    assert [bounds(r, 3) for r in range(3)] == [
        ("00000000", "55555554"), ("55555555", "aaaaaaa9"), ("aaaaaaaa", "ffffffff")]
    assert [bounds(r, 8)[0] for r in range(8)] == [f"{r * 0x20000000:08x}" for r in range(8)]


def test_a_single_partition_covers_everything_inclusively() -> None:
    assert partition_range(0, 1) == (uuid.UUID(int=0), MAX_UUID)


def test_ranks_outside_the_count_are_refused() -> None:
    with pytest.raises(ValueError, match=r"rank 2 is outside 0\.\.1"):
        partition_range(2, 2)


def row(partition: int | None, *, member: bool = True, gone: bool = False,
        started: int = 0, id_: uuid.UUID | None = None) -> dict[str, Any]:
    return {"id": id_ or uuid.uuid4(), "partition": partition, "started_at": started,
            "member": member, "gone": gone, "oldest_due": None, "at": None}


def test_a_missing_middle_partition_is_covered_by_the_others() -> None:
    me = uuid.uuid4()
    rows = [row(1), row(2, member=False), row(3, id_=me)]
    view = view_of(rows, me, 3)
    assert (view.rank, view.members) == (1, 2)
    assert (view.low, view.high) == partition_range(1, 2)


def test_gone_processes_are_listed_for_reclaiming_and_unpartitioned_serves_all() -> None:
    me = uuid.uuid4()
    dead = row(2, member=False, gone=True)
    view = view_of([row(None, id_=me), dead], me, None)
    assert view.gone == [dead["id"]]
    assert (view.low, view.high) == (uuid.UUID(int=0), MAX_UUID)


async def test_members_see_each_other_join_and_leave(database_url: str,
                                                    engine: AsyncEngine) -> None:
    dsn = raw_dsn(normalize_database_url(database_url))
    first = Membership(dsn, uuid.uuid4(), 1, on_wake=lambda: None, heartbeat_interval=0.2,
                       member_stale=1.0)
    second = Membership(dsn, uuid.uuid4(), 2, on_wake=lambda: None, heartbeat_interval=0.2,
                        member_stale=1.0)
    tasks = [asyncio.create_task(first.run())]
    await asyncio.wait_for(first.ready.wait(), 10)
    assert first.view.members == 1
    tasks.append(asyncio.create_task(second.run()))

    async def both_see_two() -> bool:
        return first.view.members == 2 and second.view.members == 2

    await eventually(both_see_two, 10, "the join")
    assert (first.view.low, first.view.high) == partition_range(0, 2)
    assert (second.view.low, second.view.high) == partition_range(1, 2)
    await second.leave()

    async def first_alone() -> bool:
        return first.view.members == 1 and first.view.high == MAX_UUID

    await eventually(first_alone, 10, "the leave")
    assert await strands.scalar(engine, "SELECT count(*) FROM respirate_process") == 1
    await first.leave()
    await asyncio.gather(*tasks)
    assert await strands.scalar(engine, "SELECT count(*) FROM respirate_process") == 0
