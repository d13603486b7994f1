"""`MachineImage.VersionNexus`: capture a version from a stopped VM, and destroy it.

    archive → finish_archive → wait
    destroy → wait_vms → destroy_objects → finish_destroy        (from any label, on `destroy`)
    archive ─(third failure)→ destroy_objects → failed

The archive runs on the VM's host as a detached unit (lib/host/archive.py) that respirate
polls; SSH connections may drop and respirate may restart without losing it. Labels are
re-runnable: a host command that already happened is harmless to repeat.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Row

from lib import crypto, log, ssh, store, ubid
from lib.ssh import agent
from model import machine_image, machine_image_store, semaphore
from model import storage_key_encryption_key as kek
from model.sshable import target_of
from prog.base import FrameField, Prog, label

MIB, GIB = 1 << 20, 1 << 30
FAILURE_LIMIT = 3
RETRY_AFTER = 10  # seconds × failures so far
POLL_MAX = 30  # polls come after 1, 2, 4, … seconds, then every POLL_MAX
SECONDS_PER_GIB = 24  # the archive deadline grows with the disk
MIN_DEADLINE = 600
DESTROY_DEADLINE = 1800
WAIT_VMS_NAP = 30
STORE_RETRY = 30

logger = log.get_logger(__name__)


_METAL = text("SELECT m.*, v.machine_image_id, v.version FROM machine_image_version_metal m"
              " JOIN machine_image_version v ON v.id = m.id WHERE m.id = :id")
_METAL_FOR_UPDATE = text(f"{_METAL.text} FOR UPDATE OF m")
# A finished capture takes `latest` unless a choice came while it ran: an operator's pick or
# another capture's finish (machine_image.latest_choices; a destroy's move is none), though an
# empty latest is always taken. A frame without the count (one seeded in the reference's
# shape) takes it unconditionally, as the reference does: the last finisher wins.
_TAKE_LATEST = text(
    "UPDATE machine_image SET latest_version_id = :id, latest_choices = latest_choices + 1"
    " WHERE id = :image_id AND (CAST(:choices AS bigint) IS NULL"
    " OR latest_choices = :choices OR latest_version_id IS NULL)")


def _mib(size: int) -> int:
    return -(-size // MIB)


class VersionNexus(Prog):
    semaphores = ("destroy",)

    source_vm_id = FrameField()
    vm_host_id = FrameField()
    destroy_source_after = FrameField()
    set_as_latest = FrameField()
    archive_failures = FrameField()
    archive_polls = FrameField()

    @property
    def unit(self) -> str:
        return f"archive_{ubid.to_ubid(self.strand_id)}"

    async def _metal(self, for_update: bool = False) -> Row[Any]:
        return (await self.connection.execute(
            _METAL_FOR_UPDATE if for_update else _METAL, {"id": self.strand_id})).one()

    async def _host(self) -> ssh.Target:
        return await target_of(self.connection, ubid.to_uuid(self.vm_host_id))

    async def _source_disk(self) -> Row[Any]:
        return (await self.connection.execute(text(
            "SELECT path, size_bytes FROM vm_storage_volume WHERE vm_id = :id"),
            {"id": ubid.to_uuid(self.source_vm_id)})).one()

    async def _start_archive(self, host: ssh.Target) -> None:
        metal = await self._metal()
        master_key = crypto.master_key()
        secrets = agent.archive_secrets(
            await machine_image_store.description(self.connection, metal.store_id, master_key),
            metal.store_prefix, await kek.key(self.connection, metal.archive_kek_id, master_key))
        await agent.start_archive(host, self.unit, (await self._source_disk()).path, secrets)

    @label
    async def archive(self) -> None:
        disk = await self._source_disk()
        self.register_deadline(self.wait, max(MIN_DEADLINE,
                                              SECONDS_PER_GIB * -(-disk.size_bytes // GIB)))
        host = await self._host()
        state = (await agent.unit(host, "check", self.unit)).strip()
        if state == "NotStarted":
            await self._start_archive(host)
            self.archive_polls = 0
            self.nap(1)
        if state == "InProgress":
            self.archive_polls = (self.archive_polls or 0) + 1
            self.nap(min(POLL_MAX, 2 ** self.archive_polls))
        if state == "Succeeded":
            stats = await agent.archive_stats(host, self.unit)
            self.frame_set("logical_size_bytes", stats["logical_size_bytes"])
            self.frame_set("physical_size_bytes", stats["physical_size_bytes"])
            self.hop(self.finish_archive)  # which cleans the unit: stats stay until saved
        if state == "Failed":
            await self._archive_failed(host)
        logger.warning("unexpected unit state", unit=self.unit, state=state)
        self.nap(60)

    async def _archive_failed(self, host: ssh.Target) -> None:
        failures = (self.archive_failures or 0) + 1
        self.archive_failures = failures
        lines = (await agent.unit(host, "logs", self.unit)).strip().splitlines()
        reason = lines[-1][:500] if lines else "the archive failed without a message"
        await agent.unit(host, "clean", self.unit)
        logger.warning("archive failed", version=ubid.to_ubid(self.strand_id),
                       attempt=failures, reason=reason)
        if failures >= FAILURE_LIMIT:
            await self.connection.execute(text(
                "UPDATE machine_image_version_metal SET status = 'failed',"
                " pinned_source_vm_id = NULL, failure_reason = :reason WHERE id = :id"),
                {"reason": f"archive failed {failures} times; last: {reason}",
                 "id": self.strand_id})
            self.unregister_deadline(self.wait)  # failed, reason recorded: nothing to page
            self.hop(self.destroy_objects)
        self.nap(RETRY_AFTER * failures)

    @label
    async def finish_archive(self) -> None:
        await agent.unit(await self._host(), "clean", self.unit)
        metal = await self._metal()
        if self.set_as_latest:
            await machine_image.lock(self.connection, metal.machine_image_id)
        await self.connection.execute(text(
            "UPDATE machine_image_version_metal SET status = 'ready', archive_size_mib = :size,"
            " pinned_source_vm_id = NULL WHERE id = :id"),
            {"size": _mib(self.frame["physical_size_bytes"]), "id": self.strand_id})
        await self.connection.execute(text(
            "UPDATE machine_image_version SET actual_size_mib = :size WHERE id = :id"),
            {"size": _mib(self.frame["logical_size_bytes"]), "id": self.strand_id})
        if self.destroy_source_after:
            await semaphore.incr(self.connection, ubid.to_uuid(self.source_vm_id), "destroy")
        if self.set_as_latest:
            await self.connection.execute(_TAKE_LATEST, {
                "id": self.strand_id, "image_id": metal.machine_image_id,
                "choices": self.frame.get("latest_choices_at_start")})
        self.hop(self.wait)

    @label
    async def wait(self) -> None:
        self.hibernate()

    @label
    async def destroy(self) -> None:
        self.register_deadline(None, DESTROY_DEADLINE)
        await self.decr("destroy")
        metal = await self._metal()
        if metal.status == "creating":
            host = await self._host()
            if (await agent.unit(host, "check", self.unit)).strip() == "InProgress":
                await agent.unit(host, "stop", self.unit)
            await agent.unit(host, "clean", self.unit)
        # The shared lock order: the image first, then the version's metal row.
        await machine_image.lock(self.connection, metal.machine_image_id)
        await self._metal(for_update=True)
        await self.connection.execute(text(
            "UPDATE machine_image_version_metal SET status = 'destroying',"
            " pinned_source_vm_id = NULL WHERE id = :id"), {"id": self.strand_id})
        await machine_image.move_latest_off(self.connection, metal.machine_image_id,
                                            self.strand_id)
        self.hop(self.wait_vms)

    @label
    async def wait_vms(self) -> None:
        in_use = (await self.connection.execute(text(
            "SELECT 1 FROM vm_storage_volume WHERE machine_image_version_id = :id LIMIT 1"),
            {"id": self.strand_id})).scalar()
        if in_use:
            self.nap(WAIT_VMS_NAP)
        self.hop(self.destroy_objects)

    @label
    async def destroy_objects(self) -> None:
        metal = await self._metal()
        description = await machine_image_store.description(self.connection, metal.store_id,
                                                            crypto.master_key())
        try:
            deleted = await store.delete_page(description, metal.store_prefix)
        except store.StoreError as error:
            logger.warning("deleting archive objects failed", version=ubid.to_ubid(self.strand_id),
                           error=str(error))
            self.nap(STORE_RETRY)
        if deleted:
            self.nap(0)
        self.hop(self.failed if metal.status == "failed" else self.finish_destroy)

    @label
    async def finish_destroy(self) -> None:
        metal = await self._metal()
        execute = self.connection.execute
        await execute(text("DELETE FROM machine_image_version_metal WHERE id = :id"),
                      {"id": self.strand_id})
        await execute(text("DELETE FROM storage_key_encryption_key WHERE id = :id"),
                      {"id": metal.archive_kek_id})
        await execute(text("DELETE FROM machine_image_version WHERE id = :id"),
                      {"id": self.strand_id})
        self.pop("Metal machine image version is destroyed")

    @label
    async def failed(self) -> None:
        """Parked: the version stays visible as `failed` until someone destroys it."""
        self.hibernate()


