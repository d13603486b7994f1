"""`project`: who owns VMs, images and stores; capture quotas are counted per project."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib.errors import ResourceNotFound, ValidationFailed
from model.base import Base


class Project(Base):
    __tablename__ = "project"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String)
    # NULL: the configured default (IMAGECP_VERSION_QUOTA).
    version_quota: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


async def lock(connection: AsyncConnection, project_id: uuid.UUID) -> None:
    """Lock the project row until the caller's transaction ends (e.g. to create an image
    under a name checked to be free)."""
    found = (await connection.execute(text("SELECT 1 FROM project WHERE id = :id FOR UPDATE"),
                                      {"id": project_id})).scalar()
    if not found:
        raise ResourceNotFound()


_QUOTA = text("SELECT coalesce(p.version_quota, :default) AS quota, (SELECT count(*)"
               " FROM machine_image_version v JOIN machine_image i"
               " ON i.id = v.machine_image_id WHERE i.project_id = p.id) AS used"
               " FROM project p WHERE p.id = :id")


async def reserve_version(connection: AsyncConnection, project_id: uuid.UUID,
                          default_quota: int) -> None:
    """Lock the project and refuse one more version over its quota.

    The lock lasts until the caller's transaction ends: concurrent captures in one project
    count one after another, so together they never exceed the quota. Take it last, just
    before writing, so it is held briefly.
    """
    await lock(connection, project_id)
    # Counted in a statement after the lock's: one statement's snapshot predates its wait for
    # the lock, and would miss the versions of the capture it waited for.
    row = (await connection.execute(_QUOTA, {"id": project_id, "default": default_quota})).one()
    if row.used + 1 > row.quota:
        raise ValidationFailed({"version": "Insufficient quota for machine image versions."
                                f" Requested: {row.used + 1}, maximum allowed: {row.quota}"})
