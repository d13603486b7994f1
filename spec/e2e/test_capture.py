"""Captures run by bin/respirate processes against a real sshd host and real stores:
the seed's whole path, a respirate killed mid-archive, an SSH cut mid-archive, and S3."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from lib import crypto, ubid
from lib.ssh import agent
from model import machine_image_store
from model import machine_image_version as versions
from model import storage_key_encryption_key as kek
from spec.support import strands
from spec.support.processes import RespirateProcess, eventually
from spec.support.s3 import S3Server
from spec.support.sshd import sessions_of
from spec.support.world import MIB, World, sha256_of

HOME = Path("/home/imagecp")
BIG = 1536 * MIB  # an archive that lasts a few seconds here


async def status(world: World, version_id: Any) -> str | None:
    found = await strands.scalar(world.engine, "SELECT status FROM machine_image_version_metal"
                                 " WHERE id = :id", id=version_id)
    return None if found is None else str(found)


async def until_status(world: World, version_id: Any, wanted: str, limit: float = 120) -> None:
    async def reached() -> bool:
        return await status(world, version_id) == wanted
    await eventually(reached, limit, f"version {wanted}")


def progress_file(version_id: Any) -> Path:
    return HOME / ".imagecp/units" / f"archive_{ubid.to_ubid(version_id)}" / "progress.json"


async def mid_archive(version_id: Any) -> None:
    """Until the host agent reports some but not all bytes done."""
    async def halfway() -> bool:
        try:
            progress = json.loads(progress_file(version_id).read_text())
        except (OSError, ValueError):
            return False
        return bool(0 < progress["bytes_done"] < progress["bytes_total"])
    await eventually(halfway, 60, "archive in progress")


async def restore(world: World, version_id: Any, output: Path) -> str:
    async with world.engine.connect() as connection:
        row = (await connection.execute(text(
            "SELECT store_id, store_prefix, archive_kek_id FROM machine_image_version_metal"
            " WHERE id = :id"), {"id": version_id})).one()
        store = await machine_image_store.description(connection, row.store_id,
                                                      crypto.master_key())
        key = await kek.key(connection, row.archive_kek_id, crypto.master_key())
    assert world.host is not None
    await agent.archive_tool(world.host.target, "restore",
                             agent.archive_secrets(store, row.store_prefix, key),
                             "--output", str(output))
    return sha256_of(output)


async def test_respirate_captures_a_stopped_vm_then_destroys_the_version(
        world: World, spawn: Callable[..., RespirateProcess]) -> None:
    size = 20 * MIB + 1
    vm_id, disk, digest = await world.vm("src", size=size,
                                         extents=[(MIB, 3 * MIB), (17 * MIB, MIB)])
    spawn()
    version_id = await world.capture(vm_id, "v1.0", destroy_source=True)
    await until_status(world, version_id, "ready")
    async with world.engine.connect() as connection:
        row = (await connection.execute(text(
            "SELECT v.actual_size_mib, m.archive_size_mib, m.store_prefix, m.pinned_source_vm_id"
            " FROM machine_image_version v JOIN machine_image_version_metal m USING (id)"
            " WHERE v.id = :id"), {"id": version_id})).one()
    stored = sum((world.store / name).stat().st_size for name in world.objects(row.store_prefix))
    assert (row.actual_size_mib, row.archive_size_mib) == (21, -(-stored // MIB))
    assert row.pinned_source_vm_id is None

    async def source_gone() -> bool:
        return not disk.exists() and await strands.scalar(
            world.engine, "SELECT count(*) FROM vm WHERE id = :id", id=vm_id) == 0
    await eventually(source_gone, 60, "the source VM destroyed")
    assert await restore(world, version_id, world.disks / "restored.raw") == digest

    async with world.engine.begin() as connection:
        await versions.request_destroy(connection, world.image_id, "v1.0")

    async def version_gone() -> bool:
        return bool(await strands.scalar(world.engine, "SELECT count(*) FROM"
                                         " machine_image_version WHERE id = :id",
                                         id=version_id) == 0)
    await eventually(version_gone, 60, "the version destroyed")
    assert world.objects() == []


async def test_a_respirate_killed_mid_archive_is_replaced_and_the_archive_finishes_once(
        world: World, spawn: Callable[..., RespirateProcess]) -> None:
    vm_id, _, digest = await world.vm("src", size=BIG, extents=[(0, BIG)])
    first = spawn()
    version_id = await world.capture(vm_id, "v1")
    await mid_archive(version_id)
    first.signal(signal.SIGKILL)
    first.wait()
    spawn()
    await until_status(world, version_id, "ready")
    frame = (await strands.row(world.engine, version_id)).stack[0]
    assert frame.get("archive_failures") is None  # the unit ran on, it was not restarted
    prefix = await strands.scalar(world.engine, "SELECT store_prefix FROM"
                                  " machine_image_version_metal WHERE id = :id", id=version_id)
    objects = world.objects(prefix)
    manifest = json.loads((world.store / prefix / "manifest.json").read_text())
    assert len(objects) == len(manifest["chunks"]) + 1  # one archive: its chunks and manifest
    assert await restore(world, version_id, world.disks / "restored.raw") == digest


async def test_an_ssh_cut_mid_archive_does_not_stop_the_capture(
        world: World, spawn: Callable[..., RespirateProcess]) -> None:
    vm_id, _, digest = await world.vm("src", size=BIG, extents=[(0, BIG)])
    spawn()
    version_id = await world.capture(vm_id, "v1")
    await mid_archive(version_id)
    assert world.host is not None
    # Respirate connects only to poll the unit: cut the first connection it opens.
    cut: list[int] = []
    progress: dict[str, int] = {}

    async def cut_one() -> bool:
        for pid in sessions_of(world.host):  # type: ignore[arg-type]
            os.kill(pid, signal.SIGKILL)
            cut.append(pid)
        if cut:  # at once: the unit's files stay until respirate next polls it
            progress.update(json.loads(progress_file(version_id).read_text()))
        return bool(cut)
    await eventually(cut_one, 60, "an SSH connection of respirate's cut")
    assert progress["bytes_done"] < progress["bytes_total"]  # the cut came mid-archive
    await until_status(world, version_id, "ready")
    assert await restore(world, version_id, world.disks / "restored.raw") == digest


async def test_captures_into_s3_record_sizes_restore_and_are_destroyed_moving_latest(
        world: World, spawn: Callable[..., RespirateProcess], s3_server: S3Server) -> None:
    await world.own_store(**s3_server.store)
    client: Any = s3_server.client()

    def stored(label: str) -> dict[str, int]:
        listed = client.list_objects_v2(Bucket=s3_server.bucket).get("Contents", [])
        return {o["Key"]: o["Size"] for o in listed if f"/{label}/" in o["Key"]}

    spawn()
    ids, digests = {}, {}
    for label in ("v1", "v2"):
        vm_id, _, digests[label] = await world.vm(f"src-{label}", size=12 * MIB + 1,
                                                  extents=[(0, 2 * MIB), (9 * MIB, MIB)])
        ids[label] = await world.capture(vm_id, label)
        await until_status(world, ids[label], "ready")
    assert world.objects() == []  # nothing went to the location's default store
    for label, version_id in ids.items():
        objects = stored(label)
        assert any(key.endswith(f"/{label}/manifest.json") for key in objects)
        async with world.engine.connect() as connection:
            row = (await connection.execute(text(
                "SELECT v.actual_size_mib, m.archive_size_mib FROM machine_image_version v"
                " JOIN machine_image_version_metal m USING (id) WHERE v.id = :id"),
                {"id": version_id})).one()
        assert (row.actual_size_mib, row.archive_size_mib) == (
            13, -(-sum(objects.values()) // MIB))
        assert await restore(world, version_id, world.disks / f"{label}.raw") == digests[label]
    assert await strands.scalar(world.engine, "SELECT latest_version_id FROM machine_image"
                                " WHERE id = :id", id=world.image_id) == ids["v2"]

    for label, then_latest in (("v2", ids["v1"]), ("v1", None)):
        async with world.engine.begin() as connection:
            await versions.request_destroy(connection, world.image_id, label)

        async def gone(label: str = label) -> bool:
            return not stored(label) and await strands.scalar(
                world.engine, "SELECT count(*) FROM machine_image_version WHERE id = :id",
                id=ids[label]) == 0
        await eventually(gone, 60, f"{label}'s objects and rows gone")
        assert await strands.scalar(world.engine, "SELECT latest_version_id FROM machine_image"
                                    " WHERE id = :id", id=world.image_id) == then_latest
    assert client.list_objects_v2(Bucket=s3_server.bucket).get("KeyCount") == 0
    for table in ("machine_image_version_metal", "storage_key_encryption_key"):
        assert await strands.scalar(world.engine, f"SELECT count(*) FROM {table}") == 0
