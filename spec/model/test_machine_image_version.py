"""Starting a capture (`assemble`): what it writes, and every refusal writing nothing."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import crypto, ubid
from lib.errors import (
    ApiError,
    InvalidLocation,
    InvalidRequest,
    ResourceNotFound,
    ValidationFailed,
)
from model import machine_image_store, semaphore
from model import machine_image_version as versions
from model import storage_key_encryption_key as kek
from spec.support import strands
from spec.support.world import MIB, World

TABLES = ("project", "machine_image_version", "machine_image_version_metal",
          "storage_key_encryption_key", "strand", "semaphore", "machine_image", "vm",
          "vm_storage_volume")


async def counts(engine: AsyncEngine) -> dict[str, Any]:
    """Every row the capture tables hold, so a refusal can be shown to change nothing."""
    async with engine.connect() as connection:
        return {table: (await connection.execute(text(
            f"SELECT coalesce(jsonb_agg(t ORDER BY t.id), '[]') FROM {table} t"))).scalar()
            for table in TABLES}


async def refused(world: World, vm_id: uuid.UUID | None, error: type[ApiError], message: str,
                  **options: Any) -> ApiError:
    before = await counts(world.engine)
    with pytest.raises(error) as raised:
        await world.capture(vm_id or uuid.uuid4(), **options)
    assert raised.value.message == message
    assert await counts(world.engine) == before
    return raised.value


async def test_a_capture_writes_the_version_its_key_its_pinned_metal_and_its_strand(
        seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    version_id = await seeded.capture(vm_id, "v1.0", destroy_source=True)
    row = await strands.row(seeded.engine, version_id)
    assert (row.prog, row.label) == ("MachineImage.VersionNexus", "archive")
    assert row.stack == [{"source_vm_id": ubid.to_ubid(vm_id),
                          "vm_host_id": ubid.to_ubid(seeded.host_id),
                          "destroy_source_after": True, "set_as_latest": True,
                          "latest_choices_at_start": 0}]
    async with seeded.engine.connect() as connection:
        metal = (await connection.execute(text(
            "SELECT * FROM machine_image_version_metal WHERE id = :id"),
            {"id": version_id})).one()
        key = await kek.key(connection, metal.archive_kek_id, crypto.master_key())
        sealed = (await connection.execute(text(
            "SELECT key_sealed, auth_data FROM storage_key_encryption_key WHERE id = :id"),
            {"id": metal.archive_kek_id})).one()
    assert (metal.status, metal.pinned_source_vm_id, metal.archive_size_mib) == (
        "creating", vm_id, None)
    assert metal.store_prefix == (f"{ubid.to_ubid(seeded.project_id)}/"
                                  f"{ubid.to_ubid(seeded.image_id)}/v1.0/")
    assert len(key) == 32 and key not in sealed.key_sealed
    assert sealed.auth_data == f"machine_image_version_{ubid.to_ubid(version_id)}_v1.0"
    assert ubid.to_ubid(version_id).startswith("mv")


async def test_a_version_without_a_label_is_labelled_with_the_time(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    version_id = await seeded.capture(vm_id, None)
    label = await strands.scalar(seeded.engine, "SELECT version FROM machine_image_version"
                                 " WHERE id = :id", id=version_id)
    assert re.fullmatch(r"20\d{12}", label)
    frame = (await strands.row(seeded.engine, version_id)).stack[0]
    assert frame["destroy_source_after"] is False


async def test_an_unknown_location_is_refused_naming_the_available_ones(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    error = await refused(seeded, vm_id, InvalidLocation,
                          "Validation failed for following path components: location",
                          location="nowhere")
    assert error.status == 404
    assert error.details == {"location": "Given location is not a valid location."
                                         " Available locations: lab"}


async def test_an_unknown_image_is_not_found(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    seeded.image = "missing"
    error = await refused(seeded, vm_id, ResourceNotFound,
                          "Sorry, we couldn’t find the resource you’re looking for.")
    assert error.body()["error"]["type"] == "ResourceNotFound"


async def test_the_image_may_be_named_by_its_id(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    seeded.image = ubid.to_ubid(seeded.image_id)
    assert await seeded.capture(vm_id)


@pytest.mark.parametrize("label", ["-v1", "v 1", "a" * 65, "v1/../x", "ü"])
async def test_an_invalid_label_is_refused(seeded: World, label: str) -> None:
    vm_id, _, _ = await seeded.vm("src")
    await refused(seeded, vm_id, ApiError, versions.LABEL_ERROR, version=label)


async def test_a_label_in_use_is_refused(seeded: World) -> None:
    first, _, _ = await seeded.vm("one")
    second, _, _ = await seeded.vm("two")
    await seeded.capture(first, "v1")
    await refused(seeded, second, ApiError, "Version v1 already exists for this machine image")


async def test_a_malformed_vm_id_is_refused(seeded: World) -> None:
    before = await counts(seeded.engine)
    capture = versions.Capture(seeded.project_id, "lab", "base", vm="not-an-id", version="v1")
    async with seeded.engine.begin() as connection:
        with pytest.raises(InvalidRequest,
                           match="Value provided not a valid id for parameter vm"):
            await versions.assemble(connection, capture, versions.Limits(40, 16),
                                    master_key=crypto.master_key())
    assert await counts(seeded.engine) == before


async def test_vms_of_other_projects_and_locations_are_not_found(seeded: World) -> None:
    other_project, other_location = ubid.generate(ubid.TYPE_PROJECT), ubid.generate(
        ubid.TYPE_LOCATION)
    await strands.execute(seeded.engine, "INSERT INTO project (id, name) VALUES (:id, 'other')",
                          id=other_project)
    await strands.execute(seeded.engine, "INSERT INTO location (id, name) VALUES (:id, 'far')",
                          id=other_location)
    theirs, _, _ = await seeded.vm("theirs", project_id=other_project)
    elsewhere, _, _ = await seeded.vm("elsewhere", location_id=other_location)
    for vm_id in (theirs, elsewhere, ubid.generate(ubid.TYPE_VM)):
        await refused(seeded, vm_id, ApiError, "Source VM not found")


async def test_the_quota_is_enforced_with_the_reference_details(seeded: World) -> None:
    await strands.execute(seeded.engine, "UPDATE project SET version_quota = 1")
    first, _, _ = await seeded.vm("one")
    second, _, _ = await seeded.vm("two")
    await seeded.capture(first, "v1")
    error = await refused(seeded, second, ValidationFailed,
                          "Validation failed for following fields: version", version="v2")
    assert error.details == {"version": "Insufficient quota for machine image versions."
                                        " Requested: 2, maximum allowed: 1"}


async def test_the_quota_is_checked_before_the_store_like_the_reference(seeded: World) -> None:
    await strands.execute(seeded.engine, "UPDATE project SET version_quota = 0")
    await strands.execute(seeded.engine, "DELETE FROM machine_image_store")
    vm_id, _, _ = await seeded.vm("src")
    await refused(seeded, vm_id, ValidationFailed,
                  "Validation failed for following fields: version")


async def test_a_vm_deleted_while_its_capture_waits_for_it_is_not_found(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    async with seeded.engine.connect() as deleting:
        await deleting.execute(text("DELETE FROM vm_storage_volume WHERE vm_id = :id"),
                               {"id": vm_id})
        await deleting.execute(text("DELETE FROM strand WHERE id = :id"), {"id": vm_id})
        await deleting.execute(text("DELETE FROM vm WHERE id = :id"), {"id": vm_id})
        capture = asyncio.create_task(seeded.capture(vm_id))
        await strands.wait_for_lock_waiter(seeded.engine)
        await deleting.commit()
    with pytest.raises(InvalidRequest, match=r"^Source VM not found$"):
        await capture


async def test_without_a_store_the_capture_is_refused(seeded: World) -> None:
    await strands.execute(seeded.engine, "DELETE FROM machine_image_store")
    vm_id, _, _ = await seeded.vm("src")
    await refused(seeded, vm_id, ApiError, "No machine image store configured for this location")


async def test_the_projects_own_store_wins_over_the_locations_default(seeded: World) -> None:
    async with seeded.engine.begin() as connection:
        own = await machine_image_store.create(
            connection, location_id=seeded.location_id, project_id=seeded.project_id,
            kind="directory", path="/srv/own", master_key=crypto.master_key())
    vm_id, _, _ = await seeded.vm("src")
    version_id = await seeded.capture(vm_id)
    assert await strands.scalar(seeded.engine, "SELECT store_id FROM"
                                " machine_image_version_metal WHERE id = :id",
                                id=version_id) == own


@pytest.mark.parametrize(("options", "message"), [
    ({"arch": "arm64"}, "Source VM arch (arm64) does not match machine image arch (x64)"),
    ({"vm_host_id": None}, "Source VM must be a metal VM"),
    ({"disks": []}, "Source VM must have only one storage volume"),
    ({"disks": [("/d/a", MIB), ("/d/b", MIB)]}, "Source VM must have only one storage volume"),
    ({"state": "running"}, "Source VM must be stopped"),
    ({"disks": [("/d/a", 40 * 1024 * MIB + 1)]},
     "Source VM's storage volume is larger than 40 GiB"),
])
async def test_a_vm_that_cannot_be_captured_is_refused(seeded: World, options: dict[str, Any],
                                                       message: str) -> None:
    vm_id, _, _ = await seeded.vm("src", **options)
    await refused(seeded, vm_id, ApiError, message)


async def test_a_vm_with_a_pending_signal_is_not_stopped(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    async with seeded.engine.begin() as connection:
        await semaphore.incr(connection, vm_id, "start")
    await refused(seeded, vm_id, ApiError, "Source VM must be stopped")


async def test_a_pinned_vm_is_refused(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    await seeded.capture(vm_id, "v1")
    await refused(seeded, vm_id, ApiError,
                  "Another machine image version is already being captured from this source VM",
                  version="v2")


async def test_concurrent_captures_from_one_vm_let_exactly_one_through(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    results = await asyncio.gather(*(seeded.capture(vm_id, f"v{n}") for n in range(6)),
                                   return_exceptions=True)
    created = [r for r in results if isinstance(r, uuid.UUID)]
    errors = [r for r in results if not isinstance(r, uuid.UUID)]
    assert len(created) == 1
    assert {type(e) for e in errors} == {InvalidRequest}
    assert {e.message for e in errors if isinstance(e, ApiError)} == {
        "Another machine image version is already being captured from this source VM"}
    assert await strands.scalar(seeded.engine, "SELECT count(*) FROM strand WHERE prog ="
                                " 'MachineImage.VersionNexus'") == 1


async def test_concurrent_captures_of_one_label_let_exactly_one_through(seeded: World) -> None:
    vms = [(await seeded.vm(f"src{n}"))[0] for n in range(5)]
    results = await asyncio.gather(*(seeded.capture(vm_id, "v1") for vm_id in vms),
                                   return_exceptions=True)
    assert sum(isinstance(r, uuid.UUID) for r in results) == 1
    assert {type(r) for r in results if not isinstance(r, uuid.UUID)} == {InvalidRequest}
    assert {r.message for r in results if isinstance(r, ApiError)} == {
        "Version v1 already exists for this machine image"}


async def test_destroy_requests(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    version_id = await seeded.capture(vm_id, "v1")
    async with seeded.engine.begin() as connection:
        with pytest.raises(ResourceNotFound, match="Machine image version not found"):
            await versions.request_destroy(connection, seeded.image_id, "v2")
        assert await versions.request_destroy(connection, seeded.image_id, "v1") == version_id
        assert await versions.request_destroy(connection, seeded.image_id, "v1") == version_id
    await strands.execute(seeded.engine, "INSERT INTO machine_image_version (id,"
                          " machine_image_id, version) VALUES (:id, :image, 'bare')",
                          id=ubid.generate(ubid.TYPE_MACHINE_IMAGE_VERSION), image=seeded.image_id)
    async with seeded.engine.begin() as connection:
        with pytest.raises(InvalidRequest, match="Version has no metal record to destroy"):
            await versions.request_destroy(connection, seeded.image_id, "bare")
    assert await strands.scalar(seeded.engine, "SELECT count(*) FROM semaphore WHERE"
                                " strand_id = :id AND name = 'destroy'", id=version_id) == 2




async def test_concurrent_captures_never_exceed_the_quota(seeded: World) -> None:
    await strands.execute(seeded.engine, "UPDATE project SET version_quota = 3")
    vms = [(await seeded.vm(f"src{n}"))[0] for n in range(8)]
    results = await asyncio.gather(*(seeded.capture(vm_id, f"v{n}")
                                     for n, vm_id in enumerate(vms)), return_exceptions=True)
    assert sum(isinstance(r, uuid.UUID) for r in results) == 3
    assert {type(r) for r in results if not isinstance(r, uuid.UUID)} == {ValidationFailed}
    assert await strands.scalar(seeded.engine, "SELECT count(*) FROM machine_image_version") == 3


async def test_a_destroyed_version_frees_its_place_in_the_quota(seeded: World) -> None:
    await strands.execute(seeded.engine, "UPDATE project SET version_quota = 1")
    first, _, _ = await seeded.vm("one")
    second, _, _ = await seeded.vm("two")
    version_id = await seeded.capture(first, "v1")
    await refused(seeded, second, ValidationFailed,
                  "Validation failed for following fields: version", version="v2")
    # What finish_destroy deletes.
    for table in ("strand", "machine_image_version_metal", "machine_image_version"):
        await strands.execute(seeded.engine, f"DELETE FROM {table} WHERE id = :id",
                              id=version_id)
    assert await seeded.capture(second, "v2")


async def test_a_quota_lowered_below_use_refuses_new_versions(seeded: World) -> None:
    for n in range(3):
        await seeded.capture((await seeded.vm(f"src{n}"))[0], f"v{n}")
    await strands.execute(seeded.engine, "UPDATE project SET version_quota = 2")
    error = await refused(seeded, (await seeded.vm("late"))[0], ValidationFailed,
                          "Validation failed for following fields: version", version="v9")
    assert error.details == {"version": "Insufficient quota for machine image versions."
                                        " Requested: 4, maximum allowed: 2"}
