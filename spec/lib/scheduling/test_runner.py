"""Strand, lease and step: reference §7 items 1–14, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import ubid
from lib.scheduling.flow import EngineBug, Exit, Hop, LeaseLost, MalformedStrand, Nap, StrandFailed
from lib.scheduling.runner import StrandRunner
from model import semaphore
from spec.support import strands


async def test_hop_step_changes_label(engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "hop_entry")
    outcome = await runner.run(strand_id, budget=0)
    assert isinstance(outcome, Hop)
    assert str(outcome) == "hop Test#hop_entry -> Test#hop_exit"
    row = await strands.row(engine, strand_id)
    assert row.label == "hop_exit"
    assert row.lease_holder is None and not row.leased  # released in the step's commit


async def test_run_continues_through_hops_under_one_lease_then_exits_and_self_deletes(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "hop_entry")
    outcome = await runner.run(strand_id, budget=10)
    assert isinstance(outcome, Exit)
    assert outcome.value == {"msg": "hop finished"}
    assert await strands.row(engine, strand_id) is None


async def test_zero_naps_keep_running_within_the_budget(engine: AsyncEngine,
                                                        runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "counter")
    outcome = await runner.run(strand_id, budget=10)
    assert isinstance(outcome, Exit) and outcome.value == {"count": 3}


async def test_a_run_with_no_budget_left_stops_after_one_step_and_stays_due(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "counter")
    outcome = await runner.run(strand_id, budget=0)
    assert isinstance(outcome, Nap) and outcome.seconds == 0
    row = await strands.row(engine, strand_id)
    assert row.stack[0]["count"] == 1
    assert row.due_in <= timedelta(0) and not row.leased


async def test_lease_is_taken_only_when_free(engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "napper")
    state = await runner.take(strand_id)
    assert state is not None
    async with engine.connect() as other:
        assert await StrandRunner(other).run(strand_id) is None  # held: body never runs
    assert isinstance(await runner.run_leased(state), Nap)
    assert (await strands.row(engine, strand_id)).label == "napper"


async def test_an_exited_strand_is_never_run_again(engine: AsyncEngine,
                                                   runner: StrandRunner) -> None:
    parent = await strands.create(engine, "napper")
    child = await strands.create(engine, "popper", parent_id=parent)
    assert isinstance(await runner.run(child), Exit)
    assert (await strands.row(engine, child)).exitval == {"msg": "popped"}
    assert await runner.run(child) is None


async def test_taking_the_lease_reloads_every_column(engine: AsyncEngine,
                                                     runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "napper")
    await strands.execute(engine, "UPDATE strand SET label = 'popper' WHERE id = :id",
                          id=strand_id)
    state = await runner.take(strand_id)
    assert state is not None and state.label == "popper" and state.try_ == 1


async def test_label_without_flow_control_is_refused(engine: AsyncEngine,
                                                     runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "start")
    with pytest.raises(StrandFailed) as failure:
        await runner.run(strand_id)
    assert isinstance(failure.value.__cause__, EngineBug)
    assert str(failure.value.__cause__) == "BUG: Prog Test#start did not provide flow control"


async def test_flow_control_is_not_swallowed_by_except_exception(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "swallower")
    outcome = await runner.run(strand_id, budget=0)
    assert isinstance(outcome, Hop) and outcome.label == "popper"


async def test_nap_123_moves_schedule_more_than_121_seconds(engine: AsyncEngine,
                                                            runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "napper")
    outcome = await runner.run(strand_id)
    assert isinstance(outcome, Nap) and str(outcome) == "nap for 123 seconds"
    row = await strands.row(engine, strand_id)
    assert row.due_in > timedelta(seconds=121)
    assert row.try_ == 0 and row.lease_holder is None


async def test_wake_between_lease_and_nap_survives(engine: AsyncEngine,
                                                   runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "napper")
    state = await runner.take(strand_id)
    assert state is not None
    async with engine.begin() as other:
        await semaphore.incr(other, strand_id, "test_semaphore")
    await runner.run_leased(state)
    assert (await strands.row(engine, strand_id)).due_in < timedelta(seconds=60)


async def test_wake_from_another_connection_during_the_step_is_never_lost(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    """The signal commits while the step's transaction is open; the nap must not hide it."""
    strand_id = await strands.create(engine, "sleeper", stack=[{"seconds": 0.5}])
    run = asyncio.create_task(runner.run(strand_id))
    await asyncio.sleep(0.2)  # the step is inside asyncio.sleep, its transaction open
    async with engine.begin() as other:
        assert await semaphore.incr(other, strand_id, "test_semaphore") is not None
    assert isinstance(await run, Nap)
    row = await strands.row(engine, strand_id)
    assert row.due_in <= timedelta(0)  # woken, although the label napped 60 s
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore WHERE strand_id = :id",
                                id=strand_id) == 1


async def test_self_signal_keeps_the_nap(engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "snap_signal_napper")
    await runner.run(strand_id)
    assert (await strands.row(engine, strand_id)).due_in > timedelta(seconds=100)
    assert await strands.scalar(engine, "SELECT name FROM semaphore WHERE strand_id = :id",
                                id=strand_id) == "test_semaphore"


async def test_external_signal_during_step_keeps_an_overdue_strand_runnable(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "late_signal_napper",
                                     schedule_sql="now() - interval '10 seconds'")
    await runner.run(strand_id)
    row = await strands.row(engine, strand_id)
    assert row.due_in <= timedelta(0)
    assert await strands.scalar(engine, "SELECT name FROM semaphore WHERE strand_id = :id",
                                id=strand_id) == "late_signal"


async def test_slow_step_logs_finished_strand(engine: AsyncEngine, runner: StrandRunner,
                                              logs: list[dict[str, object]]) -> None:
    strand_id = await strands.create(engine, "sleeper", stack=[{"seconds": 1.05}])
    await runner.run(strand_id)
    finished = [e for e in logs if e["event"] == "finished strand"]
    assert len(finished) == 1 and finished[0]["prog_label"] == "Test.sleeper"


async def test_a_failed_step_leaves_none_of_its_writes_and_records_the_error(
        engine: AsyncEngine, runner: StrandRunner, logs: list[dict[str, object]]) -> None:
    strand_id = await strands.create(engine, "frame_writer_failer")
    with pytest.raises(StrandFailed) as failure:
        await runner.run(strand_id)
    assert failure.value.strand_id == strand_id
    row = await strands.row(engine, strand_id)
    assert "written" not in row.stack[0]  # the frame write rolled back
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore") == 0
    assert row.label == "frame_writer_failer" and row.try_ == 1
    assert row.last_error == "RuntimeError: after writing"
    assert not row.leased and row.lease_holder is None
    event = next(e for e in logs if e["event"] == "strand failed")
    assert event["strand"] == ubid.to_ubid(strand_id)
    assert event["prog_label"] == "Test.frame_writer_failer"


async def test_failures_back_off_exponentially_capped_at_600_seconds(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "failer")
    expected = [1, 2, 4, 8]
    for seconds in expected:
        await strands.execute(engine, "UPDATE strand SET schedule = now() WHERE id = :id",
                              id=strand_id)
        with pytest.raises(StrandFailed):
            await runner.run(strand_id)
        due = (await strands.row(engine, strand_id)).due_in.total_seconds()
        assert seconds - 1 < due <= seconds  # without jitter: the cap of the window
    await strands.execute(engine, "UPDATE strand SET try = 30, schedule = now() WHERE id = :id",
                          id=strand_id)
    with pytest.raises(StrandFailed):
        await runner.run(strand_id)
    assert 599 < (await strands.row(engine, strand_id)).due_in.total_seconds() <= 600


async def test_jittered_backoff_stays_within_its_window_from_lease_time(
        engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "failer")
    await strands.execute(engine, "UPDATE strand SET try = 3 WHERE id = :id", id=strand_id)
    async with engine.connect() as connection:
        runner = StrandRunner(connection, jitter=True, lease_seconds=120)
        state = await runner.take(strand_id)
        assert state is not None
        leased_at = state.lease - timedelta(seconds=120)
        assert timedelta(0) <= state.schedule - leased_at <= timedelta(seconds=8)
        with pytest.raises(StrandFailed):
            await runner.run_leased(state)
    assert (await strands.row(engine, strand_id)).schedule == state.schedule


@pytest.mark.parametrize(("prog", "label", "stack", "reason"), [
    ("Nonexistent", "start", [{}], "no prog named 'Nonexistent'"),
    ("Test", "no_such_label", [{}], "prog Test has no label 'no_such_label'"),
    ("Test", "not_a_label", [{}], "prog Test has no label 'not_a_label'"),
    ("Test", "napper", [], "stack must be a non-empty list of objects"),
    ("Test", "napper", [1, 2], "stack must be a non-empty list of objects"),
    ("os.system", "napper", [{}], "'os.system' is not a prog name"),
])
async def test_a_malformed_strand_fails_clearly_and_backs_off(
        engine: AsyncEngine, runner: StrandRunner, logs: list[dict[str, object]],
        prog: str, label: str, stack: list[object], reason: str) -> None:
    strand_id = await strands.create(engine, label, prog=prog, stack=stack)  # type: ignore[arg-type]
    with pytest.raises(StrandFailed) as failure:
        await runner.run(strand_id)
    assert isinstance(failure.value.__cause__, MalformedStrand)
    row = await strands.row(engine, strand_id)
    assert row is not None and reason in row.last_error
    assert row.due_in > timedelta(0)  # not retried in a tight loop
    errors = [e for e in logs if e["event"] == "strand failed"]
    assert len(errors) == 1 and reason in str(errors[0]["error"])


async def test_a_lease_changed_behind_our_back_rolls_the_step_back(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "napper")
    state = await runner.take(strand_id)
    assert state is not None
    await strands.execute(engine, "UPDATE strand SET lease = now() + interval '1 hour',"
                          " lease_holder = gen_random_uuid() WHERE id = :id", id=strand_id)
    with pytest.raises(LeaseLost, match="BUG: lease violated"):
        await runner.run_leased(state)
    assert (await strands.row(engine, strand_id)).due_in < timedelta(seconds=60)


async def test_strand_rows_need_an_id(engine: AsyncEngine) -> None:
    with pytest.raises(Exception, match="null value in column \"id\""):
        await strands.execute(engine, "INSERT INTO strand (prog, label) VALUES ('Test', 'napper')")


async def test_last_error_is_cleared_by_the_next_good_step(engine: AsyncEngine,
                                                           runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "failer")
    with pytest.raises(StrandFailed):
        await runner.run(strand_id)
    await strands.execute(engine, "UPDATE strand SET label = 'napper', schedule = now()"
                          " WHERE id = :id", id=strand_id)
    await runner.run(strand_id)
    row = await strands.row(engine, strand_id)
    assert row.last_error is None and row.try_ == 0


async def test_connection_for_steps_is_left_without_an_open_transaction(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    for label in ("napper", "failer", "budder", "hop_entry"):
        strand_id = await strands.create(engine, label)
        with contextlib.suppress(StrandFailed):
            await runner.run(strand_id)
        raw = (await runner.transactions()).raw
        assert not raw.is_in_transaction() and not (await runner.transactions()).open
    assert (await runner.connection.execute(text("SELECT 1"))).scalar() == 1
