"""Images: finding one by name or id, and pointing `latest` at a ready version only."""

from __future__ import annotations

import uuid

import pytest

from lib import ubid
from lib.errors import InvalidRequest, ResourceNotFound
from model import machine_image, semaphore
from spec.support import strands
from spec.support.world import World


async def latest(world: World) -> uuid.UUID | None:
    value = await strands.scalar(world.engine, "SELECT latest_version_id FROM machine_image"
                                 " WHERE id = :id", id=world.image_id)
    return None if value is None else uuid.UUID(str(value))


async def ready_version(world: World, label: str) -> uuid.UUID:
    vm_id, _, _ = await world.vm(f"src-{label}")
    version_id = await world.capture(vm_id, label)
    await strands.execute(world.engine, "UPDATE machine_image_version_metal SET status = 'ready',"
                          " archive_size_mib = 1, pinned_source_vm_id = NULL WHERE id = :id",
                          id=version_id)
    return version_id


async def test_lookup_by_name_or_id_within_the_project_and_location(seeded: World) -> None:
    async with seeded.engine.connect() as connection:
        for reference in ("base", ubid.to_ubid(seeded.image_id)):
            assert await machine_image.lookup(connection, seeded.project_id,
                                              seeded.location_id, reference) == seeded.image_id
        for project, reference in ((seeded.project_id, "other"),
                                   (ubid.generate(ubid.TYPE_PROJECT), "base")):
            with pytest.raises(ResourceNotFound):
                await machine_image.lookup(connection, project, seeded.location_id, reference)


async def test_latest_may_point_only_at_a_ready_version(seeded: World) -> None:
    v1 = await ready_version(seeded, "v1")
    creating, _, _ = await seeded.vm("creating")
    await seeded.capture(creating, "v2")
    v3 = await ready_version(seeded, "v3")
    async with seeded.engine.begin() as connection:
        await semaphore.incr(connection, v3, "destroy")
    for label, message in (("missing", "Version missing not found"),
                           ("v2", "Version v2 is not ready"),
                           ("v3", "Version v3 is not ready")):  # a destroy is pending
        async with seeded.engine.begin() as connection:
            with pytest.raises(InvalidRequest) as raised:
                await machine_image.set_latest(connection, seeded.image_id, label)
        assert raised.value.message == message
        assert await latest(seeded) is None
    async with seeded.engine.begin() as connection:
        await machine_image.set_latest(connection, seeded.image_id, "v1")
    assert await latest(seeded) == v1
