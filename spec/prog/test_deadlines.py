"""Deadlines (reference §7 items 35–52): registration rules on a prog instance, and the
engine's paging, resolving and nap shortening against real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import ubid
from lib.scheduling import timefmt
from lib.scheduling.runner import StrandRunner
from lib.scheduling.snapshot import SemaphoreSnapshot
from lib.scheduling.state import StrandState
from lib.scheduling.step import StepContext
from prog.test import Test
from spec.support import strands


def prog_with(frame: dict[str, Any]) -> Test:
    """A Test instance over an in-memory strand (registration touches only the frame)."""
    now = datetime.now(UTC)
    state = StrandState(id=ubid.generate(ubid.TYPE_STRAND), parent_id=None, prog="Test",
                        label="napper", stack=[frame], retval=None, schedule=now, lease=now,
                        try_=1, holder=uuid.uuid4())
    context = StepContext(connection=None, strand=state,  # type: ignore[arg-type]
                          snapshot=SemaphoreSnapshot(None, None, state.id),  # type: ignore[arg-type]
                          runner=None, started=now)  # type: ignore[arg-type]
    return Test(context)


def deadline_in(prog: Test) -> float:
    return (timefmt.read(prog.frame["deadline_at"]) - datetime.now(UTC)).total_seconds()


# -- registration ------------------------------------------------------------------------------

def test_register_writes_when_no_deadline_exists() -> None:
    prog = prog_with({})
    prog.register_deadline(prog.popper, 60)
    assert prog.frame["deadline_target"] == "popper" and prog.frame["deadline_page"] is True
    assert deadline_in(prog) == pytest.approx(60, abs=1)


def test_register_tightens_a_later_deadline_but_leaves_an_earlier_one() -> None:
    prog = prog_with({})
    prog.register_deadline(prog.popper, 60)
    prog.register_deadline(prog.popper, 30)
    assert deadline_in(prog) == pytest.approx(30, abs=1)
    prog.register_deadline(prog.popper, 90)
    assert deadline_in(prog) == pytest.approx(30, abs=1)


def test_register_rewrites_for_another_target_and_resolves_the_old_one() -> None:
    prog = prog_with({})
    prog.register_deadline(prog.popper, 30)
    prog.register_deadline(prog.napper, 90)
    assert prog.frame["deadline_target"] == "napper"
    assert deadline_in(prog) == pytest.approx(90, abs=1)
    assert prog._context.pages_to_resolve == [("Test", "popper")]


def test_allow_extension_true_always_rewrites() -> None:
    prog = prog_with({})
    prog.register_deadline(prog.popper, 30)
    prog.register_deadline(prog.popper, 90, allow_extension=True)
    assert deadline_in(prog) == pytest.approx(90, abs=1)


def test_integer_allow_extension_caps_the_total_from_the_first_registration() -> None:
    prog = prog_with({})
    prog.register_deadline(prog.popper, 600, allow_extension=1800)
    start = timefmt.read(prog.frame["deadline_start"])
    assert (datetime.now(UTC) - start).total_seconds() == pytest.approx(0, abs=1)
    assert deadline_in(prog) == pytest.approx(600, abs=1)
    moved = start - timedelta(minutes=25)
    prog.frame_set("deadline_start", timefmt.write(moved))
    prog.register_deadline(prog.popper, 600, allow_extension=1800)
    assert timefmt.read(prog.frame["deadline_at"]) == moved + timedelta(minutes=30)
    assert timefmt.read(prog.frame["deadline_start"]) == moved


def test_page_false_is_stored() -> None:
    prog = prog_with({})
    prog.register_deadline(prog.popper, 60, page=False)
    assert prog.frame["deadline_page"] is False


# -- the engine: paging, resolving, naps ----------------------------------------------------------

async def active_pages(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        from sqlalchemy import text

        return list(await connection.execute(text(
            "SELECT id, tag, summary, details FROM page WHERE resolved_at IS NULL ORDER BY tag")))


async def resolve_requested(engine: AsyncEngine, page_id: uuid.UUID) -> bool:
    return bool(await strands.scalar(
        engine, "SELECT count(*) FROM semaphore WHERE strand_id = :id AND name = 'resolve'",
        id=page_id))


async def test_an_expired_deadline_pages_once(engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "set_expired_deadline")
    await runner.run(strand_id, budget=0)  # registers (already expired), hops to pusher1
    assert await active_pages(engine) == []
    await runner.run(strand_id, budget=0)  # pusher1: expiry noticed before the label
    [page] = await active_pages(engine)
    assert page.tag == f"Deadline-{strand_id}-Test-pusher2"
    assert page.summary == (f"{ubid.to_ubid(strand_id)} has an expired deadline! "
                            "Test.pusher1 did not reach pusher2 on time")
    assert page.details == {"related_resources": [ubid.to_ubid(strand_id)]}
    assert await strands.scalar(engine, "SELECT count(*) FROM strand WHERE prog = 'PageNexus'"
                                ) == 1
    row = await strands.row(engine, strand_id)
    assert row.stack[1]["deadline_notified"] is True
    await runner.run(strand_id, budget=0)
    await runner.run(strand_id, budget=0)
    assert len(await active_pages(engine)) == 1


async def test_a_failing_label_still_pages(engine: AsyncEngine, runner: StrandRunner) -> None:
    past = timefmt.write(datetime.now(UTC) - timedelta(seconds=5))
    strand_id = await strands.create(engine, "failer", stack=[
        {"deadline_at": past, "deadline_target": "popper", "deadline_page": True}])
    with pytest.raises(Exception, match="failed"):
        await runner.run(strand_id)
    assert len(await active_pages(engine)) == 1
    assert (await strands.row(engine, strand_id)).stack[0]["deadline_notified"] is True


async def test_deadline_without_page_logs_once(engine: AsyncEngine, runner: StrandRunner,
                                               logs: list[dict[str, Any]]) -> None:
    strand_id = await strands.create(engine, "set_expired_deadline_no_page")
    await runner.run(strand_id, budget=0)
    for _ in range(3):
        await strands.execute(engine, "UPDATE strand SET schedule = now() WHERE id = :id",
                              id=strand_id)
        await runner.run(strand_id, budget=0)
    expired = [e for e in logs if "expired_deadline" in e]
    assert len(expired) == 1
    assert expired[0]["event"] == (f"{ubid.to_ubid(strand_id)} has an expired deadline! "
                                   "Test.napper did not reach pusher2 on time")
    assert expired[0]["expired_deadline"] == {
        "strand": ubid.to_ubid(strand_id), "prog": "Test", "label": "napper",
        "deadline_target": "pusher2"}
    assert await active_pages(engine) == []


async def test_a_nap_is_shortened_to_the_nearest_deadline(engine: AsyncEngine,
                                                          runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "set_far_deadline_napper",
                                     stack=[{"deadline_in": 5}])
    await runner.run(strand_id)
    due = (await strands.row(engine, strand_id)).due_in.total_seconds()
    assert 3 < due < 5.5  # not the 123 s the label asked for


async def test_an_already_expired_deadline_makes_the_nap_about_zero(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "set_far_deadline_napper",
                                     stack=[{"deadline_in": -5}])
    await runner.run(strand_id)
    assert (await strands.row(engine, strand_id)).due_in.total_seconds() < 0.5


async def test_a_notified_deadline_does_not_shorten_naps(engine: AsyncEngine,
                                                         runner: StrandRunner) -> None:
    past = timefmt.write(datetime.now(UTC) - timedelta(seconds=5))
    strand_id = await strands.create(engine, "napper", stack=[
        {"deadline_at": past, "deadline_target": "popper", "deadline_notified": True}])
    await runner.run(strand_id)
    assert (await strands.row(engine, strand_id)).due_in.total_seconds() > 120


async def test_popping_a_pushed_frame_resolves_its_deadline_page(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "push_popping_deadline")
    await runner.run(strand_id, budget=0)  # push
    await runner.run(strand_id, budget=0)  # register an expired deadline, hop to popper
    await runner.run(strand_id, budget=0)  # page, then pop back
    [page] = await active_pages(engine)
    assert page.tag == f"Deadline-{strand_id}-Test-pusher2"
    assert await resolve_requested(engine, page.id)
    assert (await strands.row(engine, strand_id)).label == "push_popping_deadline"


async def test_a_budded_child_exiting_resolves_its_deadline_page(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    parent = await strands.create(engine, "bud_popping_deadline")
    await runner.run(parent, budget=10)
    [page] = await active_pages(engine)
    assert await resolve_requested(engine, page.id)


async def test_reaching_the_target_resolves_the_page_and_clears_the_keys(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "reach_deadline_target")
    await runner.run(strand_id, budget=0)  # registers hop_exit at -1 s, hops to napper
    await runner.run(strand_id, budget=0)  # napper: pages
    [page] = await active_pages(engine)
    await strands.execute(engine, "UPDATE strand SET label = 'go_to_hop_exit', schedule = now()"
                          " WHERE id = :id", id=strand_id)
    await runner.run(strand_id, budget=0)  # hops to hop_exit
    await runner.run(strand_id, budget=0)  # hop_exit is the target: resolved, then pops
    assert await resolve_requested(engine, page.id)


async def test_reaching_the_target_deletes_the_deadline_keys(engine: AsyncEngine,
                                                            runner: StrandRunner) -> None:
    future = timefmt.write(datetime.now(UTC) + timedelta(hours=1))
    strand_id = await strands.create(engine, "napper", stack=[
        {"deadline_at": future, "deadline_target": "napper", "deadline_page": True,
         "deadline_start": future, "deadline_notified": True, "other": 1}])
    await runner.run(strand_id)
    frame = (await strands.row(engine, strand_id)).stack[0]
    assert not set(frame) & {"deadline_at", "deadline_target", "deadline_page",
                             "deadline_start", "deadline_notified"}
    assert frame["other"] == 1


async def test_registering_another_target_resolves_the_old_page(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    past = timefmt.write(datetime.now(UTC) - timedelta(seconds=5))
    strand_id = await strands.create(engine, "switch_deadline_target", stack=[
        {"deadline_at": past, "deadline_target": "pusher2", "deadline_page": True}])
    await runner.run(strand_id, budget=0)  # pages pusher2, then registers popper
    [page] = [p for p in await active_pages(engine) if p.tag.endswith("pusher2")]
    assert await resolve_requested(engine, page.id)


async def test_lower_frames_page_under_the_prog_that_owns_them(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    strand_id = await strands.create(engine, "push_test2_with_deadline")
    for _ in range(3):
        await runner.run(strand_id, budget=0)
    summaries = sorted(p.summary.split("! ")[1] for p in await active_pages(engine))
    assert summaries == ["Test.Test2.napper did not reach start on time",
                         "Test.deadline_then_push did not reach pusher3 on time"]


async def test_unregister_resolves_the_page_and_clears_the_deadline(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    past = timefmt.write(datetime.now(UTC) - timedelta(seconds=5))
    strand_id = await strands.create(engine, "unregister_popper_deadline", stack=[
        {"deadline_at": past, "deadline_target": "popper", "deadline_page": True}])
    await runner.run(strand_id)
    [page] = await active_pages(engine)
    assert await resolve_requested(engine, page.id)
    assert "deadline_at" not in (await strands.row(engine, strand_id)).stack[0]


async def test_unregister_without_a_page_still_clears(engine: AsyncEngine,
                                                     runner: StrandRunner) -> None:
    future = timefmt.write(datetime.now(UTC) + timedelta(hours=1))
    strand_id = await strands.create(engine, "unregister_popper_deadline", stack=[
        {"deadline_at": future, "deadline_target": "popper", "deadline_start": future}])
    await runner.run(strand_id)
    frame = (await strands.row(engine, strand_id)).stack[0]
    assert not set(frame) & {"deadline_at", "deadline_target", "deadline_start"}
    assert await active_pages(engine) == []
