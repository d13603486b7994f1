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
    """Lock the project row until the caller's transaction ends: captures in one project run
    their checks one after another, so quota and label checks cannot race each other."""
    found = (await connection.execute(text("SELECT 1 FROM project WHERE id = :id FOR UPDATE"),
                                      {"id": project_id})).scalar()
    if not found:
        raise ResourceNotFound()


async def check_version_quota(connection: AsyncConnection, project_id: uuid.UUID,
                              default_quota: int) -> None:
    """Refuse one more version over the project's quota (call under `lock`)."""
    quota = (await connection.execute(text(
        "SELECT coalesce(version_quota, :default) FROM project WHERE id = :id"),
        {"id": project_id, "default": default_quota})).scalar_one()
    used = (await connection.execute(text(
        "SELECT count(*) FROM machine_image_version v JOIN machine_image i"
        " ON i.id = v.machine_image_id WHERE i.project_id = :id"), {"id": project_id})).scalar_one()
    if used + 1 > quota:
        raise ValidationFailed({"version": "Insufficient quota for machine image versions."
                                f" Requested: {used + 1}, maximum allowed: {quota}"})
