"""`location`: where hosts (and later VMs and images) live, named by operators."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import db
from lib.errors import InvalidLocation
from model.base import Base


class Location(Base):
    __tablename__ = "location"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(collation="C"), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


async def by_name(connection: AsyncConnection, name: str) -> uuid.UUID:
    """The location's id; InvalidLocation (naming those that exist) when there is none."""
    found = (await connection.execute(text("SELECT id FROM location WHERE name = :name"),
                                      {"name": db.text_or_none(name)})).scalar()
    if found is None:
        raise await unknown(connection)
    return uuid.UUID(str(found))


async def unknown(connection: AsyncConnection) -> InvalidLocation:
    """The refusal of a location that does not exist: it names those that do."""
    names = (await connection.execute(text("SELECT name FROM location ORDER BY name"))
             ).scalars().all()
    return InvalidLocation(list(names))
