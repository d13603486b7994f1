"""Page assembly (reference §7 items 136–139): one active page per tag, escalation."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from model import page
from spec.support import strands


async def assemble(engine: AsyncEngine, summary: str, severity: str = "error",
                   extra: dict[str, object] | None = None) -> Any:
    async with engine.begin() as connection:
        return await page.assemble(connection, summary, ["TestTag", "resource123"],
                                   related_resources=["vmxyz"], severity=severity,
                                   extra_data=extra)


async def test_assemble_creates_a_page_and_its_strand(engine: AsyncEngine) -> None:
    page_id = await assemble(engine, "disk full", extra={"host": "h1"})
    assert page_id is not None
    row = await strands.row(engine, page_id)
    assert row.prog == "PageNexus" and row.label == "start"
    async with engine.connect() as connection:
        from sqlalchemy import text

        stored = (await connection.execute(text("SELECT * FROM page"))).one()
    assert stored.tag == "TestTag-resource123" and stored.summary == "disk full"
    assert stored.details == {"host": "h1", "related_resources": ["vmxyz"]}
    assert stored.severity == "error"


async def test_a_second_assemble_with_the_active_tag_updates_in_place(
        engine: AsyncEngine) -> None:
    first = await assemble(engine, "one", severity="warning")
    assert await assemble(engine, "two", severity="warning", extra={"n": 2}) is None
    assert await strands.scalar(engine, "SELECT count(*) FROM page") == 1
    assert await strands.scalar(engine, "SELECT summary FROM page WHERE id = :id",
                                id=first) == "two"
    assert await strands.scalar(engine, "SELECT count(*) FROM strand") == 1


async def test_higher_severity_retriggers_equal_or_lower_does_not(engine: AsyncEngine) -> None:
    first = await assemble(engine, "one", severity="error")
    await assemble(engine, "same", severity="error")
    await assemble(engine, "lower", severity="info")
    retriggers = "SELECT count(*) FROM semaphore WHERE strand_id = :id AND name = 'retrigger'"
    assert await strands.scalar(engine, retriggers, id=first) == 0
    await assemble(engine, "higher", severity="critical")
    assert await strands.scalar(engine, retriggers, id=first) == 1
    assert await strands.scalar(engine, "SELECT severity::text FROM page") == "critical"


async def test_a_resolved_page_does_not_block_a_new_one(engine: AsyncEngine) -> None:
    first = await assemble(engine, "one")
    await strands.execute(engine, "UPDATE page SET resolved_at = now() WHERE id = :id", id=first)
    second = await assemble(engine, "again")
    assert second is not None and second != first


def test_severities_are_ordered_and_unknown_ones_refused() -> None:
    order = [page.Severity.parse(n).value for n in ("info", "warning", "error", "critical")]
    assert order == sorted(order) and len(set(order)) == 4
    with pytest.raises(ValueError, match="unknown page severity 'fatal'"):
        page.Severity.parse("fatal")


def test_tags_join_parts_flattening_nested_lists_and_blanking_none() -> None:
    assert page.tag_of(["Deadline", ["a", None], 3]) == "Deadline-a--3"


async def test_resolve_request_without_an_active_page_is_a_no_op(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        assert await page.request_resolve(connection, ["Nope"]) is False
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore") == 0
