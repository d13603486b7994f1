"""`machine_image`: a named, per-location, per-architecture series of versions.

Lock order, shared by everything that changes `latest_version_id`: the image row first
(FOR UPDATE), then the version's metal row. Setting latest and destroying a version both
follow it, so they serialise instead of deadlocking.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import ubid
from lib.errors import InvalidRequest, ResourceNotFound
from model import machine_image_version_metal as metal
from model.base import Base

ARCHES = ("x64", "arm64")


class MachineImage(Base):
    __tablename__ = "machine_image"
    __table_args__ = (UniqueConstraint("project_id", "location_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("project.id"))
    location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("location.id"))
    name: Mapped[str]
    arch: Mapped[str] = mapped_column(String(collation="C"))
    latest_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("machine_image_version.id", use_alter=True))
    # Times `latest` was chosen (an operator's pick, a capture's finish); a destroy's move of
    # it is no choice. A capture takes `latest` only if no choice came while it ran.
    latest_choices: Mapped[int] = mapped_column(server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


async def lookup(connection: AsyncConnection, project_id: uuid.UUID, location_id: uuid.UUID,
                 reference: str) -> uuid.UUID:
    """The project's image in the location named by `reference`: an `m1` id, else a name."""
    by_id = ubid.is_valid(reference, ubid.TYPE_MACHINE_IMAGE)
    image_id = (await connection.execute(text(
        "SELECT id FROM machine_image WHERE project_id = :project_id"
        " AND location_id = :location_id AND (id = :id OR name = :name)"),
        {"project_id": project_id, "location_id": location_id,
         "id": ubid.to_uuid(reference) if by_id else None, "name": reference})).scalar()
    if image_id is None:
        raise ResourceNotFound()
    return uuid.UUID(str(image_id))


async def lock(connection: AsyncConnection, image_id: uuid.UUID) -> None:
    await connection.execute(text("SELECT 1 FROM machine_image WHERE id = :id FOR UPDATE"),
                             {"id": image_id})


async def set_latest(connection: AsyncConnection, image_id: uuid.UUID, label: str) -> None:
    """Point `latest` at a ready version, by label."""
    await lock(connection, image_id)
    version_id = (await connection.execute(text(
        "SELECT id FROM machine_image_version WHERE machine_image_id = :image_id"
        " AND version = :label"), {"image_id": image_id, "label": label})).scalar()
    if version_id is None:
        raise InvalidRequest(f"Version {label} not found")
    if await metal.display_state(connection, version_id, lock=True) != "ready":
        raise InvalidRequest(f"Version {label} is not ready")
    await connection.execute(text(
        "UPDATE machine_image SET latest_version_id = :version_id,"
        " latest_choices = latest_choices + 1 WHERE id = :image_id"),
        {"version_id": version_id, "image_id": image_id})


async def move_latest_off(connection: AsyncConnection, image_id: uuid.UUID,
                          version_id: uuid.UUID) -> None:
    """If `latest` is this version, move it to the newest other ready version, or to none.

    The caller holds the image lock (`lock`) and has taken the version out of `ready`.
    """
    await connection.execute(text(
        "UPDATE machine_image SET latest_version_id = (SELECT v.id FROM machine_image_version v"
        " JOIN machine_image_version_metal m ON m.id = v.id WHERE v.machine_image_id = :image_id"
        " AND v.id <> :version_id AND m.status = 'ready'"
        " ORDER BY v.created_at DESC, v.id DESC LIMIT 1)"
        " WHERE id = :image_id AND latest_version_id = :version_id"),
        {"image_id": image_id, "version_id": version_id})
