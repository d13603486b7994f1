"""`vm_host`: a machine that holds VM disks; driven by its bootstrap strand (same id)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, text
from sqlalchemy.orm import Mapped, mapped_column

from model.base import Base

STATES = ("bootstrapping", "ready", "unreachable", "refused")


class VmHost(Base):
    __tablename__ = "vm_host"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("location.id"))
    state: Mapped[str] = mapped_column(String(collation="C"), server_default="bootstrapping")
    # Why the host is not ready, in words an operator can act on.
    state_reason: Mapped[str | None]
    agent_version: Mapped[str | None] = mapped_column(String(collation="C"))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
