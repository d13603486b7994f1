"""Prog base: push, pop, hop, bud, reap and the destroy protocol (reference §7 items 15–34,
53–58), driven through the Test prog on real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import ubid
from lib.scheduling import registry
from lib.scheduling.flow import ChildFailed, EngineBug, Exit, Hop, Nap, StrandFailed
from lib.scheduling.runner import StrandRunner
from model import semaphore
from prog.base import current_label
from spec.support import strands


async def children_of(engine: AsyncEngine, parent: object) -> list[Any]:
    async with engine.connect() as connection:
        from sqlalchemy import text

        return list(await connection.execute(
            text("SELECT id, label, exitval, try FROM strand WHERE parent_id = :id ORDER BY id"),
            {"id": parent}))


async def run_failing(runner: StrandRunner, strand_id: object) -> StrandFailed:
    with pytest.raises(StrandFailed) as failure:
        await runner.run(strand_id)  # type: ignore[arg-type]
    return failure.value


# -- push and pop -------------------------------------------------------------------------

async def test_push_pop_round_trip_hands_retvals_back_down_the_stack(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "pusher1")
    seen = []
    for _ in range(4):
        outcome = await runner.run(strand_id, budget=0)
        row = await strands.row(engine, strand_id)
        seen.append((row.label, row.retval, len(row.stack)))
        assert isinstance(outcome, Hop)
    assert seen == [
        ("pusher2", None, 2),
        ("pusher3", None, 3),
        ("pusher2", {"msg": "3"}, 2),
        ("pusher1", {"msg": "2"}, 1),
    ]
    outcome = await runner.run(strand_id, budget=0)
    assert isinstance(outcome, Exit) and outcome.value == {"msg": "1"}
    assert await strands.row(engine, strand_id) is None
    assert await runner.run(strand_id) is None  # gone: nothing left to run


async def test_pushed_frame_links_back_and_carries_the_subject(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    subject = ubid.generate(ubid.TYPE_VM)
    strand_id = await strands.create(engine, "pusher1", stack=[{"subject_id": str(subject)}])
    await runner.run(strand_id, budget=0)
    frame = (await strands.row(engine, strand_id)).stack[0]
    assert frame["link"] == ["Test", "pusher1"]
    assert frame["subject_id"] == str(subject) and frame["test_level"] == "2"


async def test_push_can_override_the_subject(engine: AsyncEngine, runner: StrandRunner) -> None:
    other = ubid.generate(ubid.TYPE_VM)
    strand_id = await strands.create(engine, "push_subject",
                                     stack=[{"other_subject": str(other)}])
    await runner.run(strand_id, budget=0)
    assert (await strands.row(engine, strand_id)).stack[0]["subject_id"] == str(other)


async def test_pop_of_anything_but_a_string_or_mapping_is_refused(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    failure = await run_failing(runner, await strands.create(engine, "pop_nothing"))
    assert str(failure.__cause__) == "BUG: must pop with string or mapping"


async def test_pop_with_two_frames_and_no_link_is_refused(engine: AsyncEngine,
                                                         runner: StrandRunner) -> None:
    failure = await run_failing(runner, await strands.create(engine, "popper",
                                                             stack=[{}, {}]))
    assert str(failure.__cause__) == (
        "BUG: expect no stacks exceeding depth 1 with no back-link")


async def test_hop_to_a_string_is_refused(engine: AsyncEngine, runner: StrandRunner) -> None:
    failure = await run_failing(runner, await strands.create(engine, "hop_string"))
    assert isinstance(failure.__cause__, EngineBug)
    assert "BUG: #hop only accepts a label method" in str(failure.__cause__)


async def test_hop_to_a_method_that_is_not_a_label_is_refused(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    failure = await run_failing(runner, await strands.create(engine, "hop_undeclared"))
    assert "BUG: not valid hop target" in str(failure.__cause__)


def test_prog_outside_the_prog_package_is_refused() -> None:
    class Stray:
        pass

    with pytest.raises(EngineBug, match="BUG: prog must be in the prog package"):
        registry.name_of(Stray)


async def test_current_label_names_the_label_from_a_helper_and_none_outside(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    assert current_label() is None
    parent = await strands.create(engine, "napper")
    child = await strands.create(engine, "current_prog_reporter", parent_id=parent)
    await runner.run(child)
    assert (await strands.row(engine, child)).exitval == {"current": "Test.current_prog_reporter"}
    assert current_label() is None


def test_outcomes_render_for_logs() -> None:
    assert str(Nap(12)) == "nap for 12 seconds"
    assert str(Exit("Test", "popper", {"msg": "x"})) == (
        "Strand exits from Test#popper with {'msg': 'x'}")
    assert str(ChildFailed(1.5, RuntimeError("boom"))) == (
        "error running child strand: RuntimeError: boom, nap for 1.5 seconds")


async def test_delete_from_stack_removes_only_the_listed_keys(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(
        engine, "unregister_popper_deadline",
        stack=[{"deadline_at": "2030-01-01T00:00:00+00:00", "deadline_target": "popper",
                "deadline_page": True, "deadline_start": "2029-01-01T00:00:00+00:00",
                "keep": 1}])
    await runner.run(strand_id)
    frame = (await strands.row(engine, strand_id)).stack[0]
    assert frame["keep"] == 1
    assert not {"deadline_at", "deadline_target", "deadline_page", "deadline_start"} & set(frame)


# -- bud and reap ----------------------------------------------------------------------------

async def test_bud_then_donate_then_reap(engine: AsyncEngine, runner: StrandRunner,
                                         logs: list[dict[str, object]]) -> None:
    parent = await strands.create(engine, "budder")
    assert isinstance(await runner.run(parent, budget=0), Hop)  # budded, hopped to reaper
    [child] = await children_of(engine, parent)
    await strands.execute(engine, "INSERT INTO semaphore (id, strand_id, name) VALUES"
                          " (:sid, :id, 'x')", sid=ubid.generate(ubid.TYPE_SEMAPHORE),
                          id=child.id)
    outcome = await runner.run(parent, budget=0)  # donates a step: the child exits
    assert isinstance(outcome, Nap) and outcome.seconds == 0
    assert (await strands.row(engine, child.id)).exitval == {"msg": "popped"}
    outcome = await runner.run(parent, budget=0)  # reaps it
    assert isinstance(outcome, Hop) and outcome.label == "reaped"
    assert await children_of(engine, parent) == []
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore") == 0
    reaped = [e for e in logs if e["event"] == "reaped child"]
    assert reaped == [{"event": "reaped child", "log_level": "info",
                       "child": str(child.id), "exitval": {"msg": "popped"}}]


async def test_a_whole_family_runs_to_completion_in_one_run(engine: AsyncEngine,
                                                           runner: StrandRunner) -> None:
    parent = await strands.create(engine, "budder")
    outcome = await runner.run(parent, budget=10)
    assert isinstance(outcome, Exit) and outcome.value == {"msg": "reaped"}
    assert await strands.scalar(engine, "SELECT count(*) FROM strand") == 0


async def test_reaping_deletes_exited_grandchildren_too(engine: AsyncEngine,
                                                       runner: StrandRunner) -> None:
    root = await strands.create(engine, "reaper")
    child = await strands.create(engine, "popper", parent_id=root)
    grandchild = await strands.create(engine, "popper", parent_id=child)
    await strands.execute(engine, "UPDATE strand SET exitval = '{\"msg\": \"done\"}'"
                          " WHERE id IN (:a, :b)", a=child, b=grandchild)
    outcome = await runner.run(root, budget=10)
    assert isinstance(outcome, Exit)
    assert await strands.scalar(engine, "SELECT count(*) FROM strand") == 0


@pytest.mark.parametrize(("bud_label", "expected"), [
    ("bud_short_napper", 11.9),  # one child napping 12 s
    ("bud_napper", 120.0),  # one child napping 123 s: capped
])
async def test_parent_naps_just_short_of_its_only_child(
        engine: AsyncEngine, runner: StrandRunner, bud_label: str, expected: float) -> None:
    parent = await strands.create(engine, bud_label)
    await runner.run(parent, budget=0)
    outcome = await runner.run(parent, budget=0)
    assert isinstance(outcome, Nap) and outcome.seconds == pytest.approx(expected)


async def test_several_children_parent_naps_to_the_earliest_unleased_child(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    parent = await strands.create(engine, "bud_short_nappers")
    await runner.run(parent, budget=0)
    # both children due now: the first donation runs one; the other is still due
    outcome = await runner.run(parent, budget=0)
    assert isinstance(outcome, Nap) and outcome.seconds == pytest.approx(0.1)
    await strands.execute(engine, "UPDATE strand SET schedule = now() WHERE id = :id", id=parent)
    outcome = await runner.run(parent, budget=0)  # runs the second child: both nap 12 s
    assert isinstance(outcome, Nap) and outcome.seconds == pytest.approx(11.9, abs=0.05)


async def test_a_leased_child_is_ignored_when_computing_the_parent_nap(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    parent = await strands.create(engine, "reaper")
    await strands.create(engine, "napper", parent_id=parent,
                         schedule_sql="now() + interval '123 seconds'")
    leased = await strands.create(engine, "napper", parent_id=parent)
    await strands.execute(engine, "UPDATE strand SET lease = now() + interval '1 hour'"
                          " WHERE id = :id", id=leased)
    outcome = await runner.run(parent, budget=0)
    # the free child runs (donation ignores schedules) and naps 123 s; the leased one is skipped
    assert isinstance(outcome, Nap) and outcome.seconds == pytest.approx(120)


async def test_no_child_can_be_leased_parent_waits_for_a_wake(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    parent = await strands.create(engine, "reaper")
    leased = await strands.create(engine, "napper", parent_id=parent)
    await strands.execute(engine, "UPDATE strand SET lease = now() + interval '1 hour'"
                          " WHERE id = :id", id=leased)
    outcome = await runner.run(parent, budget=0)
    assert isinstance(outcome, Nap) and outcome.seconds == 120


async def test_a_failing_child_fails_alone_and_its_error_reaches_the_parent_run(
        engine: AsyncEngine, runner: StrandRunner, logs: list[dict[str, object]]) -> None:
    parent = await strands.create(engine, "bud_failer")
    await runner.run(parent, budget=0)
    [child] = await children_of(engine, parent)
    with pytest.raises(StrandFailed) as failure:
        await runner.run(parent, budget=0)
    assert failure.value.strand_id == child.id
    assert (await strands.row(engine, child.id)).try_ == 1
    parent_row = await strands.row(engine, parent)
    assert parent_row.try_ == 0 and parent_row.last_error is None
    failures = [e for e in logs if e["event"] == "strand failed"]
    assert [e["strand"] for e in failures] == [ubid.to_ubid(child.id)]


async def test_a_failing_child_does_not_stop_an_exited_sibling_being_reaped(
        engine: AsyncEngine, runner: StrandRunner, logs: list[dict[str, object]]) -> None:
    parent = await strands.create(engine, "bud_popper_and_failer")
    await runner.run(parent, budget=0)
    failer = next(c for c in await children_of(engine, parent) if c.label == "failer")
    popper = next(c for c in await children_of(engine, parent) if c.label == "popper")
    await strands.execute(engine, "UPDATE strand SET schedule = now() + interval '1 hour'"
                          " WHERE id = :id", id=failer.id)  # the popper is donated to first
    await runner.run(parent, budget=0)
    logs.clear()
    with pytest.raises(StrandFailed):
        await runner.run(parent, budget=0)  # reaps the popper, then donates to the failer
    events = [e["event"] for e in logs if e["event"] in ("exited", "reaped child",
                                                         "strand failed")]
    assert events == ["reaped child", "strand failed"]
    assert await strands.row(engine, popper.id) is None
    assert (await strands.row(engine, failer.id)).exitval is None


async def test_reap_with_no_children_runs_the_when_done_block(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "reap_exit_no_children")
    outcome = await runner.run(strand_id)
    assert isinstance(outcome, Exit) and outcome.value == {"msg": "reap_exit_no_children"}


async def test_the_last_child_to_exit_wakes_its_parent(engine: AsyncEngine,
                                                      runner: StrandRunner) -> None:
    parent = await strands.create(engine, "napper", schedule_sql="now() + interval '1 hour'")
    first = await strands.create(engine, "popper", parent_id=parent)
    second = await strands.create(engine, "popper", parent_id=parent)
    await runner.run(first)
    assert (await strands.row(engine, parent)).due_in > timedelta(minutes=59)  # a sibling runs
    await runner.run(second)
    assert (await strands.row(engine, parent)).due_in <= timedelta(0)


# -- semaphores through the prog ------------------------------------------------------------

async def test_prog_incr_creates_a_row_and_a_later_decr_removes_it(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "increment_semaphore")
    await runner.run(strand_id)
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore") == 1
    await strands.execute(engine, "UPDATE strand SET label = 'decrement_semaphore',"
                          " schedule = now() WHERE id = :id", id=strand_id)
    await runner.run(strand_id)
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore") == 0


async def test_undeclared_semaphore_names_are_refused(engine: AsyncEngine,
                                                     runner: StrandRunner) -> None:
    failure = await run_failing(runner, await strands.create(engine, "undeclared_semaphore"))
    assert str(failure.__cause__) == "BUG: Test declares no semaphore 'late_signal'"


# -- destroy protocol --------------------------------------------------------------------------

async def signal(engine: AsyncEngine, strand_id: object, *names: str) -> None:
    async with engine.begin() as connection:
        for name in names:
            await semaphore.incr(connection, strand_id, name)  # type: ignore[arg-type]


async def test_destroy_hops_to_the_destroy_label_which_then_exits(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "napper")
    await signal(engine, strand_id, "destroy")
    outcome = await runner.run(strand_id, budget=0)
    assert isinstance(outcome, Hop) and outcome.label == "destroy"
    outcome = await runner.run(strand_id, budget=0)
    assert isinstance(outcome, Exit) and outcome.value == {"msg": "destroyed"}


async def test_destroy_without_a_destroy_label_runs_the_hook_and_exits_early(
        engine: AsyncEngine, runner: StrandRunner, logs: list[dict[str, object]]) -> None:
    strand_id = await strands.create(engine, "start", prog="Test.Test2")
    await signal(engine, strand_id, "destroy")
    outcome = await runner.run(strand_id)
    assert isinstance(outcome, Exit)
    assert outcome.value == {"msg": "exiting early due to destroy semaphore"}
    assert [e["event"] for e in logs if e["event"] == "before_destroy ran"] == [
        "before_destroy ran"]


async def test_without_destroy_the_label_runs(engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "napper")
    await runner.run(strand_id)
    assert (await strands.row(engine, strand_id)).label == "napper"


async def test_destroy_and_destroying_with_one_frame_run_the_label(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "napper")
    await signal(engine, strand_id, "destroy", "destroying")
    assert isinstance(await runner.run(strand_id), Nap)


async def test_destroy_label_without_destroying_is_a_bug(engine: AsyncEngine,
                                                         runner: StrandRunner) -> None:
    failure = await run_failing(runner, await strands.create(engine, "destroy"))
    assert str(failure.__cause__) == "BUG: destroying semaphore not set on destroy label"


async def test_destroy_unwinds_pushed_frames(engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "pusher1")
    await runner.run(strand_id, budget=0)  # now two frames, in Test.pusher2
    await signal(engine, strand_id, "destroy", "destroying")
    outcome = await runner.run(strand_id, budget=0)
    assert isinstance(outcome, Hop) and outcome.label == "pusher1"
    assert outcome.retval == {
        "msg": "operation is cancelled due to explicitly requested destruction"}


def test_a_label_may_not_shadow_a_prog_method() -> None:
    from prog.base import Prog, label

    with pytest.raises(EngineBug, match=r"shadow Prog methods: \['hop'\]"):
        class Shadowing(Prog):
            @label
            async def hop(self) -> None:  # type: ignore[override]
                self.nap(1)
