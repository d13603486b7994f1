"""Decoding a UBID finds the row it names (reference §7 item 129)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from lib import ubid
from model import Strand, lookup
from spec.support import strands


async def test_a_strand_ubid_loads_the_strand_row(engine: AsyncEngine) -> None:
    strand_id = await strands.create(engine, "napper")
    async with AsyncSession(engine) as session:
        found = await lookup.by_ubid(session, ubid.to_ubid(strand_id))
    assert isinstance(found, Strand) and found.id == strand_id and found.label == "napper"


async def test_unknown_types_malformed_and_absent_ids_give_none(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        assert await lookup.by_ubid(session, ubid.to_ubid(ubid.generate("zz"))) is None
        assert await lookup.by_ubid(session, "not-an-id") is None
        assert await lookup.by_ubid(session, ubid.to_ubid(ubid.generate("st"))) is None
