"""MachineImage.VersionNexus against a real sshd host, real disk files and a directory store:
capture, restore, destroy, retries and failures."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from lib import crypto, ubid
from lib.scheduling import timefmt
from lib.scheduling.runner import StrandRunner
from lib.ssh import agent
from model import machine_image, machine_image_store
from model import machine_image_version as versions
from model import storage_key_encryption_key as kek
from spec.support import s3, strands
from spec.support.world import MIB, World, drive, sha256_of

HOME = Path("/home/imagecp")


async def version_row(world: World, version_id: uuid.UUID) -> Any:
    async with world.engine.connect() as connection:
        return (await connection.execute(text(
            "SELECT v.version, v.actual_size_mib, m.status, m.archive_size_mib, m.store_prefix,"
            " m.pinned_source_vm_id, m.failure_reason, m.archive_kek_id, m.store_id"
            " FROM machine_image_version v LEFT JOIN machine_image_version_metal m USING (id)"
            " WHERE v.id = :id"), {"id": version_id})).one_or_none()


async def latest(world: World) -> Any:
    return await strands.scalar(world.engine, "SELECT latest_version_id FROM machine_image"
                                " WHERE id = :id", id=world.image_id)


async def ready_versions(world: World, runner: StrandRunner, *labels: str
                         ) -> dict[str, uuid.UUID]:
    """Capture each label from a VM of its own and run it to `wait` (ready), in order."""
    ids = {}
    for label in labels:
        vm_id, _, _ = await world.vm(f"src-{label.replace('.', '-')}")
        ids[label] = await world.capture(vm_id, label)
        await drive(runner, world.engine, ids[label], "wait")
    return ids


async def secrets_of(world: World, version_id: uuid.UUID) -> str:
    row = await version_row(world, version_id)
    async with world.engine.connect() as connection:
        store = await machine_image_store.description(connection, row.store_id,
                                                      crypto.master_key())
        key = await kek.key(connection, row.archive_kek_id, crypto.master_key())
    return agent.archive_secrets(store, row.store_prefix, key)


def stored_bytes(world: World, prefix: str) -> int:
    return sum((world.store / name).stat().st_size for name in world.objects(prefix))


async def test_a_capture_archives_the_disk_and_a_restore_gives_it_back_bit_for_bit(
        world: World, runner: StrandRunner) -> None:
    size = 24 * MIB + 12345  # not a whole number of chunks or MiB
    vm_id, _, digest = await world.vm("src", size=size,
                                      extents=[(0, MIB), (9 * MIB, 5 * MIB), (size - 100, 100)])
    version_id = await world.capture(vm_id, "v1")
    await drive(runner, world.engine, version_id, "wait")
    row = await version_row(world, version_id)
    assert (row.status, row.pinned_source_vm_id, row.failure_reason) == ("ready", None, None)
    assert row.actual_size_mib == 25  # ceil(virtual bytes / MiB)
    stored = stored_bytes(world, row.store_prefix)
    assert row.archive_size_mib == -(-stored // MIB)
    assert stored < 8 * MIB  # holes and zero chunks cost nothing
    assert f"{row.store_prefix}manifest.json" in world.objects()
    assert await latest(world) == version_id
    # The unit, its stats and its progress are gone from the host.
    assert not (HOME / ".imagecp/units" / f"archive_{ubid.to_ubid(version_id)}").exists()

    assert world.host is not None
    restored = world.disks / "restored.raw"
    await agent.archive_tool(world.host.target, "restore", await secrets_of(world, version_id),
                             "--output", str(restored))
    assert sha256_of(restored) == digest
    assert restored.stat().st_size == size
    # Sparse: only the 4 MiB chunks holding data (0, 2, 3 and 6) are allocated.
    assert restored.stat().st_blocks * 512 <= 4 * 4 * MIB
    out = await agent.archive_tool(world.host.target, "verify",
                                   await secrets_of(world, version_id))
    assert out.strip()


async def test_destroy_source_removes_the_vm_and_its_disk_after_the_capture(
        world: World, runner: StrandRunner) -> None:
    vm_id, disk, _ = await world.vm("src")
    version_id = await world.capture(vm_id, "v1", destroy_source=True)
    await drive(runner, world.engine, version_id, "wait")
    assert await strands.scalar(world.engine, "SELECT count(*) FROM semaphore WHERE"
                                " strand_id = :id AND name = 'destroy'", id=vm_id) == 1
    assert await drive(runner, world.engine, vm_id, None) is None
    assert not disk.exists()
    for table, column in (("vm", "id"), ("vm_storage_volume", "vm_id")):
        assert await strands.scalar(world.engine, f"SELECT count(*) FROM {table}"
                                    f" WHERE {column} = :id", id=vm_id) == 0


async def test_destroying_a_version_removes_its_objects_and_rows_and_moves_latest(
        world: World, runner: StrandRunner) -> None:
    ids = await ready_versions(world, runner, "v1", "v10", "v1.1")
    assert await latest(world) == ids["v1.1"]
    prefixes = {label: (await version_row(world, ids[label])).store_prefix for label in ids}
    objects = {label: world.objects(prefixes[label]) for label in ids}
    assert all(objects.values())
    kek_id = (await version_row(world, ids["v1"])).archive_kek_id

    async with world.engine.begin() as connection:
        await versions.request_destroy(connection, world.image_id, "v1")
    assert await drive(runner, world.engine, ids["v1"], None) is None
    assert await version_row(world, ids["v1"]) is None
    assert await strands.scalar(world.engine, "SELECT count(*) FROM storage_key_encryption_key"
                                " WHERE id = :id", id=kek_id) == 0
    assert world.objects(prefixes["v1"]) == []
    assert not (world.store / prefixes["v1"]).exists()
    # Prefixes end in "/": destroying v1 leaves every object of v10 and v1.1.
    assert world.objects() == sorted(objects["v10"] + objects["v1.1"])
    assert await latest(world) == ids["v1.1"]  # not the destroyed one: untouched

    async with world.engine.begin() as connection:
        await versions.request_destroy(connection, world.image_id, "v1.1")
    assert await drive(runner, world.engine, ids["v1.1"], None) is None
    assert world.objects() == objects["v10"]
    assert await latest(world) == ids["v10"]  # the newest ready sibling


async def test_destroy_while_archiving_stops_the_unit_and_unpins_the_vm(
        world: World, runner: StrandRunner, logs: list[dict[str, Any]]) -> None:
    # Seconds of archive work here, so that the destroy surely finds it running.
    vm_id, disk, _ = await world.vm("src", size=512 * MIB, extents=[(0, 512 * MIB)])
    version_id = await world.capture(vm_id, "v1", destroy_source=True)
    await runner.run(version_id)  # starts the archive unit
    async with world.engine.begin() as connection:
        await versions.request_destroy(connection, world.image_id, "v1")
    assert await drive(runner, world.engine, version_id, None) is None
    commands = [e.get("command", "") for e in logs if e["event"] == "ssh command"]
    assert any(" unit stop archive_" in c for c in commands)  # it was still running
    assert world.objects() == []
    assert disk.exists()  # destroy_source acts only on success
    assert await strands.scalar(world.engine, "SELECT count(*) FROM machine_image_version_metal"
                                ) == 0
    assert not (HOME / ".imagecp/units" / f"archive_{ubid.to_ubid(version_id)}").exists()


async def test_an_archive_killed_on_the_host_is_retried_and_completes(
        world: World, runner: StrandRunner) -> None:
    vm_id, _, digest = await world.vm("src", size=256 * MIB, extents=[(0, 256 * MIB)])
    version_id = await world.capture(vm_id, "v1")
    await runner.run(version_id)  # starts the archive unit
    unit = HOME / ".imagecp/units" / f"archive_{ubid.to_ubid(version_id)}"
    os.killpg(int((unit / "pid").read_text()), signal.SIGKILL)
    await drive(runner, world.engine, version_id, "wait", seconds=120)
    row = await version_row(world, version_id)
    frame = (await strands.row(world.engine, version_id)).stack[0]
    assert row.status == "ready"
    assert frame["archive_failures"] == 1
    assert world.host is not None
    restored = world.disks / "restored.raw"
    await agent.archive_tool(world.host.target, "restore", await secrets_of(world, version_id),
                             "--output", str(restored))
    assert sha256_of(restored) == digest


async def test_three_failures_mark_the_version_failed_and_remove_partial_objects(
        world: World, runner: StrandRunner, logs: list[Any]) -> None:
    vm_id, _, _ = await world.vm("src")
    version_id = await world.capture(vm_id, "v1")
    prefix = (await version_row(world, version_id)).store_prefix
    # A directory where the manifest goes: every chunk uploads, the manifest cannot.
    (world.store / prefix / "manifest.json").mkdir(parents=True)
    for directory in (world.store / prefix).parents:  # the prefix is the host account's
        if directory == world.store:
            break
        shutil.chown(directory, "imagecp", "imagecp")
    shutil.chown(world.store / prefix, "imagecp", "imagecp")
    await drive(runner, world.engine, version_id, "failed")
    row = await version_row(world, version_id)
    assert (row.status, row.pinned_source_vm_id) == ("failed", None)
    assert row.failure_reason.startswith("archive failed 3 times; last: ")
    assert "manifest" in row.failure_reason
    assert world.objects(prefix) == []
    assert [e["attempt"] for e in logs if e["event"] == "archive failed"] == [1, 2, 3]
    # The VM is free again; a failed version is destroyed like any other.
    async with world.engine.begin() as connection:
        await versions.request_destroy(connection, world.image_id, "v1")
    assert await drive(runner, world.engine, version_id, None) is None
    assert await version_row(world, version_id) is None


async def test_the_archive_deadline_grows_with_the_disk_and_pages_when_missed(
        world: World, runner: StrandRunner) -> None:
    vm_id, _, _ = await world.vm("src", size=30 * 1024 * MIB, extents=[(0, MIB)])
    version_id = await world.capture(vm_id, "v1")
    await runner.run(version_id)
    frame = (await strands.row(world.engine, version_id)).stack[0]
    assert frame["deadline_target"] == "wait"
    left = (timefmt.read(frame["deadline_at"]) - datetime.now(UTC)).total_seconds()
    assert 30 * 24 - 10 < left <= 30 * 24  # 24 s per GiB
    await strands.execute(world.engine, "UPDATE strand SET schedule = now(), stack ="
                          " jsonb_set(stack, '{0,deadline_at}', to_jsonb(CAST(:past AS text)))"
                          " WHERE id = :id", id=version_id,
                          past=timefmt.write(datetime.now(UTC) - timedelta(seconds=1)))
    await runner.run(version_id)
    pages = await strands.scalar(world.engine, "SELECT array_agg(summary) FROM page")
    assert pages == [f"{ubid.to_ubid(version_id)} has an expired deadline!"
                     " MachineImage.VersionNexus.archive did not reach wait on time"]


async def test_an_unreachable_store_fails_the_capture_readably_and_is_cleaned_once_back(
        world: World, runner: StrandRunner, logs: list[Any]) -> None:
    port = s3.free_port()
    await world.own_store(kind="s3", endpoint=f"http://127.0.0.1:{port}", region=s3.REGION,
                          bucket="imagecp-test", access_key=s3.ACCESS_KEY,
                          secret_key=s3.SECRET_KEY)
    vm_id, _, _ = await world.vm("src")
    version_id = await world.capture(vm_id, "v1")
    await drive(runner, world.engine, version_id, "destroy_objects")
    row = await version_row(world, version_id)
    assert (row.status, row.pinned_source_vm_id) == ("failed", None)
    assert row.failure_reason.startswith("archive failed 3 times; last: archive: ")
    assert s3.SECRET_KEY not in row.failure_reason
    assert any(e["event"] == "deleting archive objects failed" for e in logs)
    # The store comes back: the (empty) prefix is cleared and the version parks as failed.
    with s3.s3_endpoint(port=port) as server:
        await drive(runner, world.engine, version_id, "failed")
        client: Any = server.client()
        assert client.list_objects_v2(Bucket=server.bucket).get("KeyCount") == 0


async def test_store_credentials_and_keys_reach_the_host_only_through_stdin(
        world: World, runner: StrandRunner, logs: list[Any], s3_server: s3.S3Server) -> None:
    await world.own_store(**s3_server.store)
    vm_id, _, _ = await world.vm("src", size=192 * MIB, extents=[(0, 192 * MIB)])
    version_id = await world.capture(vm_id, "v1")
    seen_argv: list[bytes] = []
    await runner.run(version_id)  # starts the unit
    deadline = time.monotonic() + 30
    while not any(b"archive\0create" in argv for argv in seen_argv):  # while it runs
        assert time.monotonic() < deadline, "the archive process was never seen"
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                seen_argv.append(Path(f"/proc/{pid}/cmdline").read_bytes())
    await drive(runner, world.engine, version_id, "wait")
    row = await version_row(world, version_id)
    async with world.engine.connect() as connection:
        key = base64.b64encode(await kek.key(connection, row.archive_kek_id,
                                             crypto.master_key())).decode()
    secrets = (s3_server.secret_key, s3_server.access_key, key)
    for secret in secrets:
        assert secret not in repr(logs)
        assert all(secret.encode() not in argv for argv in seen_argv)
    for root in (HOME, Path("/tmp"), Path("/dev/shm")):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20:
                with contextlib.suppress(OSError):
                    content = path.read_bytes()
                    assert not any(s.encode() in content for s in secrets), path


async def test_a_finished_capture_leaves_a_latest_chosen_meanwhile(
        world: World, runner: StrandRunner) -> None:
    ids = await ready_versions(world, runner, "v0", "v1")
    assert await latest(world) == ids["v1"]
    vm_id, _, _ = await world.vm("src-v2")
    v2 = await world.capture(vm_id, "v2")  # begins while v1 is latest
    async with world.engine.begin() as connection:  # an operator rolls back meanwhile
        await machine_image.set_latest(connection, world.image_id, "v0")
    await drive(runner, world.engine, v2, "wait")
    assert await latest(world) == ids["v0"]  # unlike the reference, the choice stands


async def test_a_capture_becomes_latest_when_the_latest_of_its_start_is_destroyed(
        world: World, runner: StrandRunner) -> None:
    v1 = (await ready_versions(world, runner, "v1"))["v1"]
    begun = {}
    for label in ("v2", "v3"):  # both begin while v1 is latest
        vm_id, _, _ = await world.vm(f"src-{label}")
        begun[label] = await world.capture(vm_id, label)
    async with world.engine.begin() as connection:
        await versions.request_destroy(connection, world.image_id, "v1")
    assert await drive(runner, world.engine, v1, None) is None
    assert await latest(world) is None  # no ready sibling to move to
    await drive(runner, world.engine, begun["v3"], "wait")
    assert await latest(world) == begun["v3"]  # the move by destroy was no one's choice
    await drive(runner, world.engine, begun["v2"], "wait")
    assert await latest(world) == begun["v3"]  # an older capture does not displace a newer


async def test_a_destroy_waits_for_the_vms_booted_from_the_version(
        world: World, runner: StrandRunner) -> None:
    vm_id, _, _ = await world.vm("src")
    version_id = await world.capture(vm_id, "v1")
    await drive(runner, world.engine, version_id, "wait")
    prefix = (await version_row(world, version_id)).store_prefix
    booted, _, _ = await world.vm("booted")  # its disk came from v1
    await strands.execute(world.engine, "UPDATE vm_storage_volume SET machine_image_version_id"
                          " = :version WHERE vm_id = :vm", version=version_id, vm=booted)
    async with world.engine.begin() as connection:
        await versions.request_destroy(connection, world.image_id, "v1")
    await drive(runner, world.engine, version_id, "wait_vms")
    for _ in range(3):  # each step finds the VM and naps
        await strands.execute(world.engine, "UPDATE strand SET schedule = now() WHERE id = :id",
                              id=version_id)
        await runner.run(version_id)
        assert (await strands.row(world.engine, version_id)).label == "wait_vms"
    assert world.objects(prefix)  # still there for the VM that may read them
    await strands.execute(world.engine, "UPDATE vm_storage_volume SET"
                          " machine_image_version_id = NULL WHERE vm_id = :vm", vm=booted)
    assert await drive(runner, world.engine, version_id, None) is None
    assert world.objects(prefix) == []


async def test_an_operator_setting_latest_and_a_destroy_of_it_serialise_on_the_image(
        world: World, runner: StrandRunner) -> None:
    ids = await ready_versions(world, runner, "v1", "v2")
    assert await latest(world) == ids["v2"]
    async with world.engine.connect() as operator:
        transaction = await operator.begin()
        await machine_image.set_latest(operator, world.image_id, "v1")  # holds the image
        async with world.engine.begin() as connection:
            await versions.request_destroy(connection, world.image_id, "v1")
        destroying = asyncio.create_task(drive(runner, world.engine, ids["v1"], "wait_vms"))
        await strands.wait_for_lock_waiter(world.engine)  # the destroy waits for the image
        await transaction.commit()
        await destroying
    assert await latest(world) == ids["v2"]  # moved off v1 once the operator's choice landed
    assert await drive(runner, world.engine, ids["v1"], None) is None


async def test_a_move_by_destroy_is_no_choice_but_an_operators_pick_stands(
        world: World, runner: StrandRunner) -> None:
    ids = await ready_versions(world, runner, "v0", "v1")
    vm_id, _, _ = await world.vm("src-v2")
    v2 = await world.capture(vm_id, "v2")  # begins while v1 is latest
    async with world.engine.begin() as connection:
        await versions.request_destroy(connection, world.image_id, "v1")
    assert await drive(runner, world.engine, ids["v1"], None) is None
    assert await latest(world) == ids["v0"]  # moved to the newest ready sibling
    await drive(runner, world.engine, v2, "wait")
    assert await latest(world) == v2  # that move was no one's choice

    vm_id, _, _ = await world.vm("src-v3")
    v3 = await world.capture(vm_id, "v3")  # begins while v2 is latest
    async with world.engine.begin() as connection:  # an operator rolls back meanwhile
        await machine_image.set_latest(connection, world.image_id, "v0")
        await versions.request_destroy(connection, world.image_id, "v2")
    assert await drive(runner, world.engine, v2, None) is None
    await drive(runner, world.engine, v3, "wait")
    assert await latest(world) == ids["v0"]  # the pick stands, though v2 has gone since


async def test_a_frame_in_the_references_shape_takes_latest_as_the_reference_does(
        world: World, runner: StrandRunner) -> None:
    await ready_versions(world, runner, "v0", "v1")
    vm_id, _, _ = await world.vm("src-v2")
    v2 = await world.capture(vm_id, "v2")
    await strands.execute(world.engine, "UPDATE strand SET stack = jsonb_set(stack, '{0}',"
                          " (stack -> 0) - 'latest_choices_at_start') WHERE id = :id", id=v2)
    async with world.engine.begin() as connection:
        await machine_image.set_latest(connection, world.image_id, "v0")
    await drive(runner, world.engine, v2, "wait")
    assert await latest(world) == v2  # over the pick made meanwhile: the last finisher wins
