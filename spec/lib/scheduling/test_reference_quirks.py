"""Each quirk of the reference engine (engine-behaviour.md §9.1) that touches the engine core,
decided deliberately: the test name says whether we keep it or differ."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import ubid
from lib.scheduling import timefmt
from lib.scheduling.flow import Hop, LeaseLost, Nap, StrandFailed
from lib.scheduling.runner import StrandRunner
from model import semaphore
from prog.base import Prog, label
from spec.prog.test_deadlines import prog_with
from spec.support import strands


async def test_1_strand_ids_are_random_so_partitions_balance_like_the_reference(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    parent = await strands.create(engine, "bud_short_nappers")
    await runner.run(parent, budget=0)
    ids = [row.id for row in await children(engine, parent)]
    assert all(ubid.prefix_of(i) == "st" for i in ids)
    millis = sorted(i.int >> 80 for i in ids)
    assert millis[1] - millis[0] > 1000 * 3600  # not a time stamp: ids spread over the space


async def test_3_lease_taking_ignores_schedule_so_donation_runs_future_children_like_the_reference(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    parent = await strands.create(engine, "reaper")
    child = await strands.create(engine, "popper", parent_id=parent,
                                 schedule_sql="now() + interval '1 hour'")
    await runner.run(parent, budget=0)
    assert (await strands.row(engine, child)).exitval == {"msg": "popped"}


async def test_4_a_run_ending_on_a_hop_leaves_the_strand_due_now_unlike_the_reference(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "hop_entry")
    await strands.execute(engine, "UPDATE strand SET try = 8 WHERE id = :id", id=strand_id)
    assert isinstance(await runner.run(strand_id, budget=0), Hop)
    row = await strands.row(engine, strand_id)
    assert row.due_in <= timedelta(0)  # not 2^8 s of leftover failure backoff
    assert row.try_ == 0


async def test_5_backoff_uses_the_try_before_increment_from_lease_time_like_the_reference(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "failer")
    await strands.execute(engine, "UPDATE strand SET try = 2 WHERE id = :id", id=strand_id)
    with pytest.raises(StrandFailed):
        await runner.run(strand_id)
    row = await strands.row(engine, strand_id)
    assert row.try_ == 3 and 3 < row.due_in.total_seconds() <= 4  # 2^2, not 2^3


async def test_6_self_signals_keep_the_nap_and_external_signals_wake_like_the_reference(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    own = await strands.create(engine, "snap_signal_napper")
    await runner.run(own)
    assert (await strands.row(engine, own)).due_in > timedelta(seconds=100)
    async with engine.begin() as connection:
        await semaphore.incr(connection, own, "test_semaphore")
    assert (await strands.row(engine, own)).due_in <= timedelta(0)


async def test_10_re_registering_a_deadline_after_it_paged_arms_it_again_unlike_the_reference(
        ) -> None:
    past = timefmt.write(datetime.now(UTC) - timedelta(seconds=5))
    prog = prog_with({"deadline_at": past, "deadline_target": "popper",
                      "deadline_notified": True})
    prog.register_deadline(prog.popper, 60, allow_extension=True)
    assert "deadline_notified" not in prog.frame


async def test_11_a_far_deadline_does_not_nudge_naps_unlike_the_reference(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "set_far_deadline_napper",
                                     stack=[{"deadline_in": 3600}])
    await runner.run(strand_id)
    due = (await strands.row(engine, strand_id)).due_in.total_seconds()
    assert 122.5 < due <= 123  # exactly the nap: no +1 ms when the deadline is farther


async def test_17_schema_has_the_due_and_parent_indexes_the_reference_lacks(
        engine: AsyncEngine) -> None:
    definitions = await strands.scalar(
        engine, "SELECT string_agg(indexdef, ' | ') FROM pg_indexes WHERE tablename = 'strand'")
    assert "strand_due_index ON public.strand USING btree (schedule) WHERE (exitval IS NULL)" \
        in definitions
    assert "strand_parent_id_index ON public.strand USING btree (parent_id)" \
        " WHERE (parent_id IS NOT NULL)" in definitions


def test_18_labels_are_inherited_by_subclasses_unlike_the_reference() -> None:
    class Base(Prog):
        @label
        async def first(self) -> None:
            self.nap(1)

    class Derived(Base):
        @label
        async def second(self) -> None:
            self.hop(self.first)

    assert Base.labels == {"first"}
    assert Derived.labels == {"first", "second"}


async def test_20_label_change_times_are_always_iso_with_microseconds_unlike_the_reference(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "hop_entry")
    await runner.run(strand_id, budget=0)
    stamp = (await strands.row(engine, strand_id)).stack[0]["last_label_changed_at"]
    assert datetime.fromisoformat(stamp).tzinfo is not None
    assert len(stamp.split(".")[1]) == len("123456+00:00")


async def test_a_run_that_exits_on_a_lost_lease_deletes_nothing(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    """The reference checks for a self-deleted row that still exists; our delete is fenced."""
    strand_id = await strands.create(engine, "popper")
    state = await runner.take(strand_id)
    assert state is not None
    await strands.execute(engine, "UPDATE strand SET lease_holder = gen_random_uuid()"
                          " WHERE id = :id", id=strand_id)
    with pytest.raises(LeaseLost):
        await runner.run_leased(state)
    assert await strands.row(engine, strand_id) is not None


async def test_no_stale_children_are_seen_across_consecutive_runs(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    parent = await strands.create(engine, "reaper")
    child = await strands.create(engine, "napper", parent_id=parent)
    await strands.execute(engine, "UPDATE strand SET lease = now() + interval '1 hour'"
                          " WHERE id = :id", id=child)
    assert isinstance(await runner.run(parent, budget=10), Nap)
    await strands.execute(engine, "DELETE FROM strand WHERE id = :id", id=child)
    await strands.execute(engine, "UPDATE strand SET schedule = now() WHERE id = :id", id=parent)
    outcome = await runner.run(parent, budget=10)
    assert outcome is not None and type(outcome).__name__ == "Exit"


async def children(engine: AsyncEngine, parent: Any) -> list[Any]:
    async with engine.connect() as connection:
        from sqlalchemy import text

        return list(await connection.execute(
            text("SELECT id FROM strand WHERE parent_id = :id"), {"id": parent}))
