"""`strand`: one durable, resumable thread of control driven by respirate."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from model.base import Base

FREE_LEASE_SQL = "now() - interval '1000 years'"


class Strand(Base):
    __tablename__ = "strand"
    __table_args__ = (
        # The dispatcher's scan: due, unexited strands in schedule order.
        Index("strand_due_index", "schedule", postgresql_where=text("exitval IS NULL")),
        Index("strand_parent_id_index", "parent_id",
              postgresql_where=text("parent_id IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("strand.id"))
    schedule: Mapped[datetime] = mapped_column(server_default=text("now()"))
    lease: Mapped[datetime] = mapped_column(server_default=text(FREE_LEASE_SQL))
    # Who holds the lease: a runner's id while held, NULL when free.
    lease_holder: Mapped[uuid.UUID | None]
    prog: Mapped[str] = mapped_column(String(collation="C"))
    label: Mapped[str] = mapped_column(String(collation="C"))
    stack: Mapped[list[dict[str, Any]]] = mapped_column(server_default=text("'[{}]'::jsonb"))
    exitval: Mapped[dict[str, Any] | None]
    retval: Mapped[dict[str, Any] | None]
    # Lease acquisitions since the last successful step; drives the failure backoff.
    try_: Mapped[int] = mapped_column("try", Integer, server_default=text("0"))
    # The last step failure, readable by operators; cleared by the next successful step.
    last_error: Mapped[str | None]
