"""`location`: where hosts (and later VMs and images) live, named by operators."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String, text
from sqlalchemy.orm import Mapped, mapped_column

from model.base import Base


class Location(Base):
    __tablename__ = "location"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(collation="C"), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
