"""`respirate_process`: a running respirate daemon, its partition and its heartbeat."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Mapped, mapped_column

from model.base import Base


class RespirateProcess(Base):
    __tablename__ = "respirate_process"

    # Also the `lease_holder` written on the strands this process runs.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    partition: Mapped[int | None]
    host: Mapped[str]
    pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    heartbeat_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    # The server process of its membership connection; gone from pg_stat_activity as soon as
    # the respirate process dies.
    backend_pid: Mapped[int | None]
