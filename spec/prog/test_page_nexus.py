"""PageNexus (reference §7 items 132–135): trigger, wait, retrigger, resolve, retention."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from lib.scheduling.flow import Exit, Hop, Nap
from lib.scheduling.runner import StrandRunner
from model import page, semaphore
from spec.support import strands


async def open_page(engine: AsyncEngine) -> Any:
    async with engine.begin() as connection:
        return await page.assemble(connection, "it broke", ["T", "1"])


async def test_start_triggers_and_waits(engine: AsyncEngine, runner: StrandRunner,
                                        logs: list[dict[str, Any]]) -> None:
    page_id = await open_page(engine)
    outcome = await runner.run(page_id, budget=0)
    assert isinstance(outcome, Hop) and outcome.label == "wait"
    assert [e["summary"] for e in logs if e["event"] == "page triggered"] == ["it broke"]
    outcome = await runner.run(page_id, budget=0)
    assert isinstance(outcome, Nap) and outcome.seconds == 6 * 3600


async def test_suppressed_start_does_not_trigger(engine: AsyncEngine, runner: StrandRunner,
                                                 logs: list[dict[str, Any]]) -> None:
    page_id = await open_page(engine)
    await strands.execute(engine, "UPDATE strand SET stack = '[{\"suppress_triggers\": true}]'"
                          " WHERE id = :id", id=page_id)
    await runner.run(page_id, budget=0)
    assert not [e for e in logs if e["event"] == "page triggered"]


async def test_retrigger_triggers_even_when_suppressed_and_clears_it(
        engine: AsyncEngine, runner: StrandRunner, logs: list[dict[str, Any]]) -> None:
    page_id = await open_page(engine)
    await strands.execute(engine, "UPDATE strand SET label = 'wait',"
                          " stack = '[{\"suppress_triggers\": true}]' WHERE id = :id", id=page_id)
    async with engine.begin() as connection:
        await semaphore.incr(connection, page_id, "retrigger")
    outcome = await runner.run(page_id)
    assert isinstance(outcome, Nap)
    assert len([e for e in logs if e["event"] == "page triggered"]) == 1
    row = await strands.row(engine, page_id)
    assert row.stack[0]["suppress_triggers"] is False
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore") == 0


async def test_resolve_marks_resolved_then_retention_deletes_it(
        engine: AsyncEngine, runner: StrandRunner) -> None:
    page_id = await open_page(engine)
    await runner.run(page_id, budget=0)
    async with engine.begin() as connection:
        await semaphore.incr(connection, page_id, "resolve")
    outcome = await runner.run(page_id, budget=0)
    assert isinstance(outcome, Hop) and outcome.label == "wait_retention"
    assert await strands.scalar(engine, "SELECT resolved_at IS NOT NULL FROM page")
    outcome = await runner.run(page_id, budget=0)
    assert isinstance(outcome, Nap) and outcome.seconds == 14 * 86400
    await strands.execute(engine, "UPDATE page SET resolved_at = now() - interval '15 days'")
    await strands.execute(engine, "UPDATE strand SET schedule = now()")
    outcome = await runner.run(page_id, budget=0)
    assert isinstance(outcome, Exit) and outcome.value == {"msg": "page is resolved"}
    assert await strands.scalar(engine, "SELECT count(*) FROM page") == 0
    assert await strands.scalar(engine, "SELECT count(*) FROM strand") == 0
