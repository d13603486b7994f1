"""The dispatcher inside one respirate, run in-process against the real database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import ubid
from lib.config import normalize_database_url
from lib.scheduling.dispatcher import Dispatcher, Settings
from lib.scheduling.respirate import Respirate, StartupError
from spec.support import strands
from spec.support.processes import eventually

FAST = {"heartbeat_interval": 0.3, "member_stale": 1.0, "holder_stale": 2.0, "jitter": False}


@pytest.fixture
async def start_respirate(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[Respirate, asyncio.Task[int]]] = []

    async def start(**settings: Any) -> tuple[Respirate, asyncio.Task[int]]:
        respirate = Respirate(normalize_database_url(database_url),
                              Settings(**{**FAST, **settings}), handle_signals=False)
        task = asyncio.create_task(respirate.serve())
        started.append((respirate, task))
        await eventually(lambda: _ready(respirate), 10, "respirate start")
        return respirate, task

    yield start
    for respirate, task in started:
        respirate.stop()
        await asyncio.wait_for(task, 30)


async def _ready(respirate: Respirate) -> bool:
    return respirate.membership is not None and respirate.membership.ready.is_set()


async def count(engine: AsyncEngine, sql: str = "SELECT count(*) FROM strand") -> int:
    return int(await strands.scalar(engine, sql))


async def test_runs_every_due_strand_to_completion_and_exits_cleanly(
        engine: AsyncEngine, start_respirate: Callable[..., Any]) -> None:
    for _ in range(150):
        await strands.create(engine, "bounce", prog="Test.Hopper", stack=[{"hops": 5}])
    respirate, task = await start_respirate(workers=4)

    async def all_done() -> bool:
        return await count(engine) == 0

    await eventually(all_done, 60, "150 strands finishing")
    respirate.stop()
    assert await asyncio.wait_for(task, 30) == 0
    assert await count(engine, "SELECT count(*) FROM respirate_process") == 0


async def test_a_new_strand_wakes_an_idle_respirate_through_notify(
        engine: AsyncEngine, start_respirate: Callable[..., Any]) -> None:
    """max_sleep is an hour: only the NOTIFY of the insert can get the strand run."""
    await start_respirate(max_sleep=3600)
    await asyncio.sleep(0.5)  # let the scan loop go to sleep
    strand_id = await strands.create(engine, "hop_entry")

    async def gone() -> bool:
        return await strands.row(engine, strand_id) is None

    await eventually(gone, 20, "the new strand running")


async def test_a_wake_of_a_napping_strand_reaches_an_idle_respirate(
        engine: AsyncEngine, start_respirate: Callable[..., Any]) -> None:
    strand_id = await strands.create(engine, "napper")
    await start_respirate(max_sleep=3600)

    async def napping() -> bool:
        row = await strands.row(engine, strand_id)
        return row.lease_holder is None and row.due_in.total_seconds() > 60

    await eventually(napping, 20, "the first nap")
    await strands.execute(engine, "UPDATE strand SET label = 'popper' WHERE id = :id",
                          id=strand_id)
    async with engine.begin() as connection:
        from model import semaphore

        await semaphore.incr(connection, strand_id, "test_semaphore")

    async def gone() -> bool:
        return await strands.row(engine, strand_id) is None

    await eventually(gone, 20, "the woken strand running")


async def held_by_another_process(engine: AsyncEngine, heartbeat: str) -> tuple[Any, Any]:
    """A strand leased for an hour by a respirate process whose last beat was at `heartbeat`."""
    holder = ubid.generate("rp")
    await strands.execute(engine, "INSERT INTO respirate_process (id, host, pid, heartbeat_at)"
                          f" VALUES (:id, 'elsewhere', 1, {heartbeat})", id=holder)
    strand_id = await strands.create(engine, "hop_entry")
    await strands.execute(engine, "UPDATE strand SET lease = now() + interval '1 hour',"
                          " lease_holder = :holder WHERE id = :id", holder=holder, id=strand_id)
    return holder, strand_id


async def test_strands_held_by_a_gone_process_are_reclaimed(
        engine: AsyncEngine, start_respirate: Callable[..., Any]) -> None:
    _, strand_id = await held_by_another_process(engine, "now() - interval '1 minute'")
    respirate, _ = await start_respirate()

    async def gone() -> bool:
        return await strands.row(engine, strand_id) is None

    await eventually(gone, 20, "the reclaimed strand running")
    assert respirate.dispatcher is not None
    assert respirate.dispatcher.metrics.reclaimed._value.get() == 1


async def test_strands_held_by_a_live_process_are_left_alone(
        engine: AsyncEngine, start_respirate: Callable[..., Any]) -> None:
    alive, held = await held_by_another_process(engine, "now() + interval '1 hour'")
    free = await strands.create(engine, "hop_entry")
    respirate, _ = await start_respirate()

    async def free_done_and_beats() -> bool:
        beats = respirate.membership.beats if respirate.membership else 0
        return await strands.row(engine, free) is None and beats >= 5

    await eventually(free_done_and_beats, 20, "the free strand running")
    assert (await strands.row(engine, held)).lease_holder == alive


async def test_shutdown_hands_back_every_lease(engine: AsyncEngine,
                                              start_respirate: Callable[..., Any]) -> None:
    ids = [await strands.create(engine, "spinner") for _ in range(6)]
    respirate, task = await start_respirate(workers=2)

    async def spinning() -> bool:
        return await count(engine, "SELECT count(*) FROM strand WHERE lease_holder IS NOT NULL"
                           ) >= 4

    await eventually(spinning, 20, "the spinners being claimed")
    respirate.stop()
    assert await asyncio.wait_for(task, 30) == 0
    assert await count(engine, "SELECT count(*) FROM strand WHERE lease_holder IS NOT NULL"
                       " OR lease > now()") == 0
    assert len(ids) == await count(engine)


async def test_a_process_whose_heartbeat_fails_starts_no_steps() -> None:
    class StaleMembership:
        def beat_age(self) -> float:
            return 8.0

    dispatcher = Dispatcher(None, Settings(fence_after=7.0), uuid.uuid4(),  # type: ignore[arg-type]
                            StaleMembership(), None, None)  # type: ignore[arg-type]
    assert dispatcher.may_step() is False
    StaleMembership.beat_age = lambda self: 1.0  # type: ignore[method-assign]
    assert dispatcher.may_step() is True
    dispatcher.stop()
    assert dispatcher.may_step() is False


async def test_an_unmigrated_database_is_refused_with_one_line(database_url: str,
                                                              engine: AsyncEngine) -> None:
    name = f"imagecp_empty_{uuid.uuid4().hex[:8]}"
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        from sqlalchemy import text

        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = normalize_database_url(database_url).set(database=name)
        with pytest.raises(StartupError, match="is not migrated: run bin/migrate"):
            await Respirate(url, Settings(), handle_signals=False).serve()
    finally:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(f'DROP DATABASE "{name}"'))


def test_settings_come_from_arguments_then_environment() -> None:
    settings = Settings.from_env({"RESPIRATE_HOLDER_STALE": "3", "RESPIRATE_JITTER": "false",
                                  "RESPIRATE_WORKERS": "9"}, workers=2)
    assert (settings.workers, settings.holder_stale, settings.jitter) == (2, 3.0, False)
    with pytest.raises(ValueError, match="RESPIRATE_MAX_SLEEP must be a number"):
        Settings.from_env({"RESPIRATE_MAX_SLEEP": "soon"})


async def test_workers_that_lose_their_connection_hand_their_strands_back(
        engine: AsyncEngine, start_respirate: Callable[..., Any]) -> None:
    """The workers' connections are cut mid-run while the scan loop's survives: the scan loop
    must still hand their strands back (not leave them leased for the lease's 120 s)."""
    ids = [await strands.create(engine, "spinner") for _ in range(4)]
    respirate, _ = await start_respirate(workers=4)

    async def all_claimed() -> bool:
        return await count(engine, "SELECT count(*) FROM strand WHERE lease_holder IS NOT NULL"
                           ) == 4

    await eventually(all_claimed, 20, "the spinners being claimed")
    # Runs keep their label in memory: relabel first, so that every run after the cut
    # (which reloads the row) finishes.
    await strands.execute(engine, "UPDATE strand SET label = 'popper' WHERE id = ANY(:ids)",
                          ids=ids)
    await strands.execute(engine, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name LIKE 'respirate/%/worker-%'")

    async def all_finished() -> bool:
        return await count(engine) == 0

    try:
        await eventually(all_finished, 30, "every strand finishing after the cut")
    except AssertionError:  # say where the strands stuck, for the next time this fails
        async with engine.connect() as connection:
            from sqlalchemy import text

            rows = list(await connection.execute(text(
                "SELECT id, label, lease > now() AS leased, lease_holder, schedule - now()"
                " AS due_in, try, last_error FROM strand")))
        dispatcher = respirate.dispatcher
        raise AssertionError(f"stuck: {rows}; held={dispatcher and dispatcher.held}"
                             f" orphans={dispatcher and dispatcher._orphans}") from None


def scan_only_dispatcher(engine: AsyncEngine) -> Dispatcher:
    """A dispatcher for driving its scan loop alone: a membership that is always fresh, no
    workers, and an hour-long idle sleep (so a lost wake shows as a hang)."""
    from lib.scheduling.membership import View
    from lib.scheduling.metrics import RespirateMetrics

    class Alive:
        view = View()

        def beat_age(self) -> float:
            return 0.0

    return Dispatcher(engine, Settings(max_sleep=3600), uuid.uuid4(), Alive(),  # type: ignore[arg-type]
                      RespirateMetrics(), None)  # type: ignore[arg-type]


async def test_an_orphan_flagged_during_a_scan_round_is_released_in_the_next(
        engine: AsyncEngine) -> None:
    """A worker may flag an orphaned lease while the scan loop is mid-query; that wake must
    not be lost (max_sleep is an hour: a lost wake leaves the loop asleep)."""
    dispatcher = scan_only_dispatcher(engine)
    releases: list[int] = []
    release = dispatcher._release_orphans

    async def release_then_a_worker_flags_another(raw: Any) -> None:
        releases.append(1)
        await release(raw)
        if len(releases) == 1:  # as a worker losing its connection right now would
            dispatcher._orphans = True
            dispatcher.wake()

    dispatcher._release_orphans = release_then_a_worker_flags_another  # type: ignore[method-assign]
    dispatcher._orphans = True
    scan = asyncio.create_task(dispatcher.scan_loop())

    async def released_twice() -> bool:
        return len(releases) >= 2

    try:
        await eventually(released_twice, 10, "the second orphan release")
    finally:
        dispatcher.stop()
        await asyncio.wait_for(scan, 10)


async def test_a_due_strand_locked_by_another_transaction_does_not_make_the_scan_spin(
        engine: AsyncEngine) -> None:
    """A parent's reap holds its due child's row locked for the length of its step."""
    strand_id = await strands.create(engine, "popper",
                                     schedule_sql="now() - interval '1 second'")
    dispatcher = scan_only_dispatcher(engine)
    rounds: list[int] = []
    scan_once = dispatcher._scan_once

    async def counted(raw: Any) -> None:
        rounds.append(1)
        await scan_once(raw)

    dispatcher._scan_once = counted  # type: ignore[method-assign]
    async with engine.connect() as locker:
        from sqlalchemy import text

        await locker.execute(text("SELECT 1 FROM strand WHERE id = :id FOR UPDATE"),
                             {"id": strand_id})
        scan = asyncio.create_task(dispatcher.scan_loop())
        await asyncio.sleep(1.0)
        dispatcher.stop()
        await asyncio.wait_for(scan, 10)
        await locker.rollback()
    assert 2 <= len(rounds) <= 60  # ~20 at one round per 50 ms; spinning would be thousands
    assert dispatcher.queue.empty()
