"""`machine_image_version`: one labelled capture of a machine image; and how one starts.

`assemble` is the one way a capture begins, shared by the API and the CLI: in the caller's
transaction it runs the reference's checks in the reference's order, and either writes the
version, its key, its metal record (pinning the VM) and its strand, or raises and writes
nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import ubid
from lib.errors import InvalidRequest, ResourceNotFound
from model import location, machine_image, machine_image_store, project, semaphore
from model import storage_key_encryption_key as kek
from model import vm as vms
from model.base import Base

LABEL = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}")
LABEL_ERROR = ("version must start with a letter or number and may contain ASCII letters,"
               " numbers, dot, hyphen, and underscore (max 64 characters).")
PROG = "MachineImage.VersionNexus"
GIB = 1 << 30


class MachineImageVersion(Base):
    __tablename__ = "machine_image_version"
    __table_args__ = (UniqueConstraint("machine_image_id", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    machine_image_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("machine_image.id"))
    version: Mapped[str] = mapped_column(String(collation="C"))
    # The captured disk's virtual size; a disk restored from it needs at least this much.
    actual_size_mib: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


def default_label(now: datetime | None = None) -> str:
    """The label of a version created without one: UTC time as 14 digits."""
    return (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")


def check_label(label: str) -> str:
    if not LABEL.fullmatch(label):
        raise InvalidRequest(LABEL_ERROR)
    return label


@dataclass(frozen=True)
class Capture:
    """A request to capture a version of `image` (name or id) from the stopped VM `vm`."""

    project_id: uuid.UUID
    location: str
    image: str
    vm: str
    version: str | None = None
    destroy_source: bool = False
    set_as_latest: bool = True


@dataclass(frozen=True)
class Limits:
    max_capture_gib: int
    default_version_quota: int


async def source_vm(connection: AsyncConnection, project_id: uuid.UUID,
                    location_id: uuid.UUID, reference: str) -> tuple[uuid.UUID, str]:
    """The project's VM in the location named by a UBID; returns its id and arch."""
    try:
        vm_id = ubid.to_uuid(reference)
    except ubid.UbidParseError:
        raise InvalidRequest("Value provided not a valid id for parameter vm") from None
    arch = (await connection.execute(text(
        "SELECT arch FROM vm WHERE id = :id AND project_id = :project_id"
        " AND location_id = :location_id"),
        {"id": vm_id, "project_id": project_id, "location_id": location_id})).scalar()
    if arch is None:
        raise InvalidRequest("Source VM not found")
    return vm_id, str(arch)


_SOURCE_FACTS = text(
    "SELECT v.arch, v.vm_host_id, EXISTS (SELECT 1 FROM machine_image_version_metal m"
    " WHERE m.pinned_source_vm_id = v.id) AS pinned,"
    " ARRAY(SELECT size_bytes FROM vm_storage_volume WHERE vm_id = v.id) AS sizes,"
    " s.label, ARRAY(SELECT name FROM semaphore WHERE strand_id = v.id) AS pending"
    " FROM vm v LEFT JOIN strand s ON s.id = v.id WHERE v.id = :id")
_LABEL_TAKEN = text("SELECT 1 FROM machine_image_version WHERE machine_image_id = :image_id"
                    " AND version = :label")
# One statement writes the version, its key, its metal record (pinning the VM) and its
# strand; foreign keys between them are checked at the statement's end.
_CREATE = text(
    "WITH version AS (INSERT INTO machine_image_version (id, machine_image_id, version)"
    " VALUES (:id, :image_id, :label) RETURNING id),"
    " kek AS (INSERT INTO storage_key_encryption_key (id, key_sealed, auth_data)"
    " VALUES (:kek_id, :sealed, :auth_data)),"
    " metal AS (INSERT INTO machine_image_version_metal (id, status, archive_kek_id,"
    " store_id, store_prefix, pinned_source_vm_id) VALUES (:id, 'creating', :kek_id,"
    " :store_id, :prefix, :vm_id))"
    " INSERT INTO strand (id, prog, label, stack) SELECT id, :prog, 'archive',"
    " jsonb_build_array(CAST(:frame AS jsonb)) FROM version")


async def _check_source(connection: AsyncConnection, vm_id: uuid.UUID, image_arch: str,
                        max_gib: int) -> uuid.UUID:
    """Lock the VM, then check it can be captured; returns its host."""
    # Facts are read after the lock, in a statement of their own: it sees what a concurrent
    # capture or start that held the lock committed.
    await vms.lock(connection, vm_id)
    vm = (await connection.execute(_SOURCE_FACTS, {"id": vm_id})).one()
    if vm.pinned:
        raise InvalidRequest(
            "Another machine image version is already being captured from this source VM")
    if vm.arch != image_arch:
        raise InvalidRequest(
            f"Source VM arch ({vm.arch}) does not match machine image arch ({image_arch})")
    if vm.vm_host_id is None:
        raise InvalidRequest("Source VM must be a metal VM")
    if len(vm.sizes) != 1:
        raise InvalidRequest("Source VM must have only one storage volume")
    if vm.label is None or vms.state_of(vm.label, vm.pending) != "stopped":
        raise InvalidRequest("Source VM must be stopped")
    if vm.sizes[0] > max_gib * GIB:
        raise InvalidRequest(f"Source VM's storage volume is larger than {max_gib} GiB")
    return uuid.UUID(str(vm.vm_host_id))


async def _check_label_free(connection: AsyncConnection, image_id: uuid.UUID,
                            label: str) -> None:
    if (await connection.execute(_LABEL_TAKEN, {"image_id": image_id, "label": label})
            ).scalar():
        raise InvalidRequest(f"Version {label} already exists for this machine image")


async def assemble(connection: AsyncConnection, capture: Capture, limits: Limits, *,
                   master_key: bytes) -> uuid.UUID:
    """Start capturing a version; returns its id. Raises an ApiError and writes nothing.

    Checks run in the reference's order, except the quota, which is counted last, under the
    project's lock (held until commit), just before writing.
    """
    location_id = await location.by_name(connection, capture.location)
    image_id = await machine_image.lookup(connection, capture.project_id, location_id,
                                          capture.image)
    label = check_label(capture.version or default_label())
    await _check_label_free(connection, image_id, label)
    vm_id, _ = await source_vm(connection, capture.project_id, location_id, capture.vm)
    store_id = await machine_image_store.resolve(connection, capture.project_id, location_id)
    if store_id is None:
        raise InvalidRequest("No machine image store configured for this location")
    # Key-share: the image cannot be deleted (FOR UPDATE) under this capture, which would
    # then find it gone; deleting waits, and sees this version.
    image = (await connection.execute(text(
        "SELECT arch, latest_version_id FROM machine_image WHERE id = :id FOR KEY SHARE"),
        {"id": image_id})).one_or_none()
    if image is None:
        raise ResourceNotFound()
    host_id = await _check_source(connection, vm_id, image.arch, limits.max_capture_gib)
    await project.reserve_version(connection, capture.project_id, limits.default_version_quota)
    await _check_label_free(connection, image_id, label)  # a capture we waited for took it?

    version_id = ubid.generate_from_time(ubid.TYPE_MACHINE_IMAGE_VERSION)
    kek_id, sealed = kek.new(master_key)
    frame = {"source_vm_id": ubid.to_ubid(vm_id), "vm_host_id": ubid.to_ubid(host_id),
             "destroy_source_after": capture.destroy_source,
             "set_as_latest": capture.set_as_latest,
             # finish_archive moves `latest` only if nobody moved it meanwhile.
             "latest_at_start": image.latest_version_id and ubid.to_ubid(image.latest_version_id)}
    await connection.execute(_CREATE, {
        "id": version_id, "image_id": image_id, "label": label, "kek_id": kek_id,
        "sealed": sealed, "auth_data": f"machine_image_version_{ubid.to_ubid(version_id)}_{label}",
        "store_id": store_id, "vm_id": vm_id, "prog": PROG, "frame": json.dumps(frame),
        "prefix": f"{ubid.to_ubid(capture.project_id)}/{ubid.to_ubid(image_id)}/{label}/"})
    return version_id


async def request_destroy(connection: AsyncConnection, image_id: uuid.UUID,
                          label: str) -> uuid.UUID:
    """Ask a version's strand to destroy it; allowed in every state, idempotent."""
    row = (await connection.execute(text(
        "SELECT v.id, m.id AS metal_id FROM machine_image_version v"
        " LEFT JOIN machine_image_version_metal m ON m.id = v.id"
        " WHERE v.machine_image_id = :image_id AND v.version = :label"),
        {"image_id": image_id, "label": label})).one_or_none()
    if row is None:
        raise ResourceNotFound("Machine image version not found")
    if row.metal_id is None:
        raise InvalidRequest("Version has no metal record to destroy")
    await semaphore.incr(connection, row.id, "destroy")
    return uuid.UUID(str(row.id))
