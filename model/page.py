"""`page`: an operator alert, driven by its own `PageNexus` strand with the same id."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, Index, String, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import ubid
from model import semaphore
from model.base import Base


class Severity(enum.Enum):
    info = 0
    warning = 1
    error = 2
    critical = 3

    @classmethod
    def parse(cls, name: str) -> Severity:
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown page severity {name!r}") from None


class Page(Base):
    __tablename__ = "page"
    __table_args__ = (
        # At most one active page per tag; resolved pages may share tags.
        Index("page_tag_index", "tag", unique=True, postgresql_where=text("resolved_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
    resolved_at: Mapped[datetime | None]
    summary: Mapped[str | None] = mapped_column(String(collation="C"))
    tag: Mapped[str] = mapped_column(String(collation="C"))
    details: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    severity: Mapped[Severity] = mapped_column(
        Enum(Severity, name="page_severity"), server_default="error"
    )


def _flatten(parts: Iterable[Any]) -> list[str]:
    flat: list[str] = []
    for part in parts:
        if isinstance(part, list | tuple):
            flat.extend(_flatten(part))
        else:
            flat.append("" if part is None else str(part))
    return flat


def tag_of(parts: Sequence[Any]) -> str:
    """The dedup key of a page: its tag parts joined with `-` (None → empty)."""
    return "-".join(_flatten(parts))


async def assemble(connection: AsyncConnection, summary: str, tag_parts: Sequence[Any],
                   related_resources: Sequence[str] = (), severity: str = "error",
                   extra_data: dict[str, Any] | None = None) -> uuid.UUID | None:
    """Open a page, or refresh the active page with the same tag.

    Returns the id of a newly created page (whose PageNexus strand is created too), or None
    when an active page with this tag already existed. A higher severity retriggers it.
    """
    rank = Severity.parse(severity)
    tag = tag_of(tag_parts)
    details = {**(extra_data or {}), "related_resources": list(related_resources)}
    existing = (await connection.execute(
        text("SELECT id, severity FROM page WHERE tag = :tag AND resolved_at IS NULL FOR UPDATE"),
        {"tag": tag},
    )).one_or_none()
    if existing is not None:
        if rank.value > Severity[existing.severity].value:
            await semaphore.incr(connection, existing.id, "retrigger")
        await connection.execute(
            text("UPDATE page SET summary = :summary, details = CAST(:details AS jsonb),"
                 " severity = :severity WHERE id = :id"),
            {"summary": summary, "details": json.dumps(details), "severity": rank.name,
             "id": existing.id},
        )
        return None
    page_id = ubid.generate(ubid.TYPE_PAGE)
    inserted = (await connection.execute(
        text("INSERT INTO page (id, summary, details, tag, severity)"
             " VALUES (:id, :summary, CAST(:details AS jsonb), :tag, :severity)"
             " ON CONFLICT (tag) WHERE resolved_at IS NULL DO UPDATE"
             " SET summary = excluded.summary, details = excluded.details,"
             " severity = excluded.severity RETURNING id"),
        {"id": page_id, "summary": summary, "details": json.dumps(details), "tag": tag,
         "severity": rank.name},
    )).scalar_one()
    if inserted != page_id:
        return None  # a concurrent assemble created it first
    await connection.execute(
        text("INSERT INTO strand (id, prog, label) VALUES (:id, 'PageNexus', 'start')"),
        {"id": page_id},
    )
    return page_id


async def active_id(connection: AsyncConnection, tag_parts: Sequence[Any]) -> uuid.UUID | None:
    return (await connection.execute(
        text("SELECT id FROM page WHERE tag = :tag AND resolved_at IS NULL"),
        {"tag": tag_of(tag_parts)},
    )).scalar_one_or_none()


async def request_resolve(connection: AsyncConnection, tag_parts: Sequence[Any]) -> bool:
    """Ask the active page with this tag to resolve itself; False when there is none."""
    page_id = await active_id(connection, tag_parts)
    if page_id is None:
        return False
    await semaphore.incr(connection, page_id, "resolve")
    return True
