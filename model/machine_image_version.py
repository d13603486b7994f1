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
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import db, ubid
from lib.errors import InvalidRequest, ResourceNotFound
from model import location, project, semaphore
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


def vm_id_of(reference: str) -> uuid.UUID:
    """The VM a request names by UBID; a malformed one is refused as the reference does."""
    try:
        return ubid.to_uuid(reference)
    except ubid.UbidParseError:
        raise InvalidRequest("Value provided not a valid id for parameter vm") from None


async def source_vm(connection: AsyncConnection, project_id: uuid.UUID,
                    location_id: uuid.UUID, reference: str) -> tuple[uuid.UUID, str]:
    """The project's VM in the location named by a UBID; returns its id and arch."""
    vm_id = vm_id_of(reference)
    # By primary key alone, the owner compared on the row: a plan through the
    # (project, location, name) index would scan every VM of a large project.
    row = (await connection.execute(text(
        "SELECT arch, project_id = :project_id AND location_id = :location_id AS visible"
        " FROM vm WHERE id = :id"),
        {"id": vm_id, "project_id": project_id, "location_id": location_id})).one_or_none()
    if row is None or not row.visible:
        raise InvalidRequest("Source VM not found")
    return vm_id, str(row.arch)


# Everything a capture request is checked against before the VM is locked, in one statement.
# The image is key-shared: it cannot be deleted under this capture (deleting waits, then sees
# this version). The project's default quota is named for the quota trigger (migration 0006).
_REQUEST = text(
    "WITH place AS (SELECT id FROM location WHERE name = :location),"
    " image AS (SELECT i.id, i.arch, i.latest_choices FROM machine_image i"
    " WHERE i.project_id = :project_id AND i.location_id = (SELECT id FROM place)"
    " AND (i.id = :image_id OR i.name = :image_name) FOR KEY SHARE)"
    " SELECT (SELECT id FROM place) AS location_id, image.id AS image_id,"
    " image.arch AS image_arch, image.latest_choices,"
    " EXISTS (SELECT 1 FROM machine_image_version v WHERE v.machine_image_id = image.id"
    " AND v.version = :label) AS label_taken,"
    # By primary key alone: a plan through (project, location, name) would scan every VM.
    " coalesce((SELECT vm.project_id = p.id AND vm.location_id = (SELECT id FROM place)"
    " FROM vm WHERE vm.id = :vm_id), false) AS vm_visible,"
    " p.versions_held, coalesce(p.version_quota, :default_quota) AS quota,"
    " (SELECT s.id FROM machine_image_store s WHERE s.location_id = (SELECT id FROM place)"
    " AND (s.project_id = p.id OR s.project_id IS NULL) ORDER BY s.project_id IS NULL"
    " LIMIT 1) AS store_id,"
    " set_config('imagecp.version_quota', :default_quota_setting, true) IS NOT NULL AS named"
    " FROM project p LEFT JOIN image ON true WHERE p.id = :project_id")
_SOURCE_FACTS = text(
    "SELECT v.arch, v.vm_host_id, EXISTS (SELECT 1 FROM machine_image_version_metal m"
    " WHERE m.pinned_source_vm_id = v.id) AS pinned,"
    " ARRAY(SELECT size_bytes FROM vm_storage_volume WHERE vm_id = v.id) AS sizes,"
    " s.label, ARRAY(SELECT name FROM semaphore WHERE strand_id = v.id) AS pending"
    " FROM vm v LEFT JOIN strand s ON s.id = v.id WHERE v.id = :id")
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
# Concurrent captures that passed their checks together meet these constraints instead.
LABEL_TAKEN = "Version {label} already exists for this machine image"
PINNED = "Another machine image version is already being captured from this source VM"
_CONSTRAINTS = {"machine_image_version_machine_image_id_version_key": LABEL_TAKEN,
                "machine_image_version_metal_pinned_source_vm_id_key": PINNED}


async def _check_source(connection: AsyncConnection, vm_id: uuid.UUID, image_arch: str,
                        max_gib: int) -> uuid.UUID:
    """Lock the VM, then check it can be captured; returns its host."""
    # Facts are read after the lock, in a statement of their own: it sees what a concurrent
    # capture or start that held the lock committed.
    try:
        await vms.lock(connection, vm_id)
    except ResourceNotFound:  # deleted since the request was read
        raise InvalidRequest("Source VM not found") from None
    vm = (await connection.execute(_SOURCE_FACTS, {"id": vm_id})).one()
    if vm.pinned:
        raise InvalidRequest(PINNED)
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


async def _request(connection: AsyncConnection, capture: Capture, label: str,
                   vm_id: uuid.UUID | None, default_quota: int) -> Any:
    by_id = ubid.is_valid(capture.image, ubid.TYPE_MACHINE_IMAGE)
    row = (await connection.execute(_REQUEST, {
        "location": db.text_or_none(capture.location), "project_id": capture.project_id,
        "image_id": ubid.to_uuid(capture.image) if by_id else None,
        "image_name": db.text_or_none(capture.image),
        "label": label if LABEL.fullmatch(label) else None, "vm_id": vm_id,
        "default_quota": default_quota,
        "default_quota_setting": str(default_quota)})).one_or_none()
    if row is None:
        raise ResourceNotFound()  # no such project
    return row


async def assemble(connection: AsyncConnection, capture: Capture, limits: Limits, *,
                   master_key: bytes) -> uuid.UUID:
    """Start capturing a version; returns its id. Raises an ApiError and writes nothing.

    The request's facts are read in one statement, then checked in the reference's order;
    then the VM is locked and checked. The quota is checked here and, for captures racing
    each other, once more by the database at commit (db.transaction raises that refusal).
    """
    label = capture.version or default_label()
    try:
        vm_id: uuid.UUID | None = vm_id_of(capture.vm)
        malformed_vm = None
    except InvalidRequest as error:
        vm_id, malformed_vm = None, error
    facts = await _request(connection, capture, label, vm_id, limits.default_version_quota)
    if facts.location_id is None:
        raise await location.unknown(connection)
    if facts.image_id is None:
        raise ResourceNotFound()
    check_label(label)
    if facts.label_taken:
        raise InvalidRequest(LABEL_TAKEN.format(label=label))
    if malformed_vm is not None:
        raise malformed_vm
    if not facts.vm_visible:
        raise InvalidRequest("Source VM not found")
    if facts.versions_held + 1 > facts.quota:
        raise project.quota_refusal(facts.versions_held + 1, facts.quota)
    if facts.store_id is None:
        raise InvalidRequest("No machine image store configured for this location")
    assert vm_id is not None
    host_id = await _check_source(connection, vm_id, facts.image_arch, limits.max_capture_gib)

    version_id = ubid.generate_from_time(ubid.TYPE_MACHINE_IMAGE_VERSION)
    kek_id, sealed = kek.new(master_key)
    frame = {"source_vm_id": ubid.to_ubid(vm_id), "vm_host_id": ubid.to_ubid(host_id),
             "destroy_source_after": capture.destroy_source,
             "set_as_latest": capture.set_as_latest,
             # finish_archive takes `latest` only if nobody chose one meanwhile.
             "latest_choices_at_start": facts.latest_choices}
    prefix = f"{ubid.to_ubid(capture.project_id)}/{ubid.to_ubid(facts.image_id)}/{label}/"
    try:
        await connection.execute(_CREATE, {
            "id": version_id, "image_id": facts.image_id, "label": label, "kek_id": kek_id,
            "sealed": sealed,
            "auth_data": f"machine_image_version_{ubid.to_ubid(version_id)}_{label}",
            "store_id": facts.store_id, "vm_id": vm_id, "prog": PROG,
            "frame": json.dumps(frame), "prefix": prefix})
    except IntegrityError as error:
        message = _CONSTRAINTS.get(db.violated_constraint(error) or "")
        if message is None:
            raise
        raise InvalidRequest(message.format(label=label)) from None
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
