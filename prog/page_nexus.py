"""`PageNexus`: the life of an operator page — triggered, waiting, resolved, kept, deleted."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from lib import ubid
from lib.log import get_logger
from prog.base import Prog, label

log = get_logger(__name__)

WAIT_SECONDS = 6 * 3600
RETENTION = timedelta(days=14)
RETENTION_SKEW = timedelta(hours=1)


class PageNexus(Prog):
    semaphores = ("resolve", "retrigger")

    async def _load(self) -> tuple[str, str, str | None]:
        row = (await self.connection.execute(
            text("SELECT tag, severity::text AS severity, summary FROM page WHERE id = :id"),
            {"id": self.strand_id})).one()
        return row.tag, row.severity, row.summary

    async def _trigger(self) -> None:
        tag, severity, summary = await self._load()
        log.warning("page triggered", page=ubid.to_ubid(self.strand_id), tag=tag,
                    severity=severity, summary=summary)

    @label
    async def start(self) -> None:
        if not self.frame.get("suppress_triggers"):
            await self._trigger()
        self.hop(self.wait)

    @label
    async def wait(self) -> None:
        if self.is_set("retrigger"):
            self.frame_set("suppress_triggers", False)
            await self._trigger()
            await self.decr("retrigger")
        if self.is_set("resolve"):
            await self.connection.execute(
                text("UPDATE page SET resolved_at = CURRENT_TIMESTAMP WHERE id = :id"),
                {"id": self.strand_id})
            log.info("page resolved", page=ubid.to_ubid(self.strand_id))
            self.hop(self.wait_retention)
        self.nap(WAIT_SECONDS)

    @label
    async def wait_retention(self) -> None:
        age = (await self.connection.execute(
            text("SELECT now() - resolved_at FROM page WHERE id = :id"),
            {"id": self.strand_id})).scalar_one()
        if age <= RETENTION + RETENTION_SKEW:
            self.nap(RETENTION.total_seconds())
        await self.connection.execute(text("DELETE FROM page WHERE id = :id"),
                                      {"id": self.strand_id})
        self.pop("page is resolved")
