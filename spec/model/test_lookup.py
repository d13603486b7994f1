"""Decoding a UBID finds the row it names (reference §7 item 129)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from lib import ubid
from model import MachineImage, MachineImageVersion, Project, Strand, Vm, VmHost, lookup
from spec.support import strands
from spec.support.world import World


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


async def test_capture_rows_are_found_by_their_ubids(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    version_id = await seeded.capture(vm_id)
    async with AsyncSession(seeded.engine) as session:
        for row_id, model in ((vm_id, Vm), (version_id, MachineImageVersion),
                              (seeded.image_id, MachineImage), (seeded.project_id, Project),
                              (seeded.host_id, VmHost)):
            found = await lookup.by_ubid(session, ubid.to_ubid(row_id))
            assert isinstance(found, model) and found.id == row_id
