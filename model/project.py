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
    # The project's versions, kept by triggers; the quota is checked against it at commit
    # (migration 0006), so concurrent captures never exceed the quota.
    versions_held: Mapped[int] = mapped_column(server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


async def lock(connection: AsyncConnection, project_id: uuid.UUID) -> None:
    """Lock the project row until the caller's transaction ends (e.g. to create an image
    under a name checked to be free)."""
    found = (await connection.execute(text("SELECT 1 FROM project WHERE id = :id FOR UPDATE"),
                                      {"id": project_id})).scalar()
    if not found:
        raise ResourceNotFound()


def quota_refusal(requested: int, quota: int) -> ValidationFailed:
    """The reference's refusal of one version more than the quota allows."""
    return ValidationFailed({"version": "Insufficient quota for machine image versions."
                             f" Requested: {requested}, maximum allowed: {quota}"})
