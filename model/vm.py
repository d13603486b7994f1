"""`vm`: a virtual machine of a project, whose disks live on one host; driven by `Vm.Nexus`.

A VM's display state comes from its strand: the label (`running`, `stopped`) unless a signal
is pending. While a capture pins the VM, it may not be started or destroyed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import ubid
from lib.errors import InvalidRequest, ResourceNotFound
from model import semaphore
from model.base import Base

PINNED_START = "Cannot start VM while it is being captured as a machine image version"
PINNED_DESTROY = "Cannot delete VM while it is being captured as a machine image version"
PROG = "Vm.Nexus"
# A pending signal names the state the VM is heading for, in this order of precedence.
PENDING = (("destroying", "destroying"), ("destroy", "destroying"), ("start", "starting"),
           ("stop", "stopping"))


class Vm(Base):
    __tablename__ = "vm"
    __table_args__ = (UniqueConstraint("project_id", "location_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("project.id"))
    location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("location.id"))
    # NULL: not on one of our hosts, so there is no disk to capture.
    vm_host_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("vm_host.id"))
    name: Mapped[str]
    arch: Mapped[str] = mapped_column(String(collation="C"))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


async def create(connection: AsyncConnection, *, project_id: uuid.UUID,
                 location_id: uuid.UUID, vm_host_id: uuid.UUID | None, name: str,
                 arch: str = "x64", disks: Sequence[tuple[str, int]] = (),
                 state: str = "stopped") -> uuid.UUID:
    """A VM whose disks (path on the host, size in bytes) exist already; its strand parks
    at `state` (`running` or `stopped`)."""
    if state not in ("running", "stopped"):
        raise ValueError(f"a new VM is running or stopped, not {state!r}")
    vm_id = ubid.generate(ubid.TYPE_VM)
    await connection.execute(text(
        "INSERT INTO vm (id, project_id, location_id, vm_host_id, name, arch)"
        " VALUES (:id, :project_id, :location_id, :vm_host_id, :name, :arch)"),
        {"id": vm_id, "project_id": project_id, "location_id": location_id,
         "vm_host_id": vm_host_id, "name": name, "arch": arch})
    for index, (path, size) in enumerate(disks):
        await connection.execute(text(
            "INSERT INTO vm_storage_volume (id, vm_id, disk_index, path, size_bytes)"
            " VALUES (:id, :vm_id, :index, :path, :size)"),
            {"id": ubid.generate(ubid.TYPE_VM_STORAGE_VOLUME), "vm_id": vm_id, "index": index,
             "path": path, "size": size})
    await connection.execute(text(
        "INSERT INTO strand (id, prog, label) VALUES (:id, :prog, :label)"),
        {"id": vm_id, "prog": PROG, "label": state})
    return vm_id


async def display_state(connection: AsyncConnection, vm_id: uuid.UUID) -> str | None:
    """`running`, `stopped`, or where a pending signal takes it; None without a strand."""
    row = (await connection.execute(text(
        "SELECT s.label, array_remove(array_agg(DISTINCT m.name), NULL) AS pending"
        " FROM strand s LEFT JOIN semaphore m ON m.strand_id = s.id"
        " WHERE s.id = :id GROUP BY s.label"), {"id": vm_id})).one_or_none()
    return None if row is None else state_of(row.label, row.pending)


def state_of(label: str, pending: list[str]) -> str:
    """The display state of a VM whose strand is at `label` with signals `pending`."""
    for name, state in PENDING:
        if name in pending:
            return state
    return label


async def is_pinned(connection: AsyncConnection, vm_id: uuid.UUID) -> bool:
    return bool((await connection.execute(text(
        "SELECT 1 FROM machine_image_version_metal WHERE pinned_source_vm_id = :id"),
        {"id": vm_id})).scalar())


async def lock(connection: AsyncConnection, vm_id: uuid.UUID) -> None:
    """Lock the VM row until the caller's transaction ends; captures, starts and destroys
    take it first, before any project lock."""
    found = (await connection.execute(text("SELECT 1 FROM vm WHERE id = :id FOR UPDATE"),
                                      {"id": vm_id})).scalar()
    if not found:
        raise ResourceNotFound()


async def _lock(connection: AsyncConnection, vm_id: uuid.UUID, pinned_message: str) -> None:
    """Lock the VM row and refuse while a capture pins it."""
    await lock(connection, vm_id)
    if await is_pinned(connection, vm_id):
        raise InvalidRequest(pinned_message)


async def request_start(connection: AsyncConnection, vm_id: uuid.UUID) -> None:
    await _lock(connection, vm_id, PINNED_START)
    await semaphore.incr(connection, vm_id, "start")


async def request_stop(connection: AsyncConnection, vm_id: uuid.UUID) -> None:
    await semaphore.incr(connection, vm_id, "stop")


async def request_destroy(connection: AsyncConnection, vm_id: uuid.UUID) -> None:
    await _lock(connection, vm_id, PINNED_DESTROY)
    await semaphore.incr(connection, vm_id, "destroy")
