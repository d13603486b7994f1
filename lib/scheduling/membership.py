"""Which respirate processes are alive, which id range is ours, and whose leases to reclaim.

Each process keeps one raw asyncpg connection that LISTENs (for due strands and membership
changes) and heartbeats. One heartbeat statement records our beat and returns every process
row, from which we derive:

- the live partitioned processes (recent beat, membership connection still open), ordered
  by (partition, start, id); the id space is split evenly among them by rank, so a missing
  middle partition is covered at once (the reference only notices a missing highest one);
- the processes that are gone (no beat for `holder_stale` s): their leases are reclaimed;
- the oldest strand that is due and unheld anywhere: a safety net for ranges nobody scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from lib import ubid
from lib.log import get_logger

log = get_logger(__name__)

DUE_CHANNEL = "strand_due"
MEMBERS_CHANNEL = "respirate_members"
MAX_UUID = uuid.UUID(int=2**128 - 1)

# A member has beaten recently and its membership connection is still open: a process killed
# outright drops out at the next beat of any other, not only once its beats are stale.
_BEAT = """
    WITH beat AS (
        INSERT INTO respirate_process (id, partition, host, pid, backend_pid)
        VALUES ($1, $2, $3, $4, pg_backend_pid())
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), backend_pid = pg_backend_pid()
        RETURNING id)
    SELECT p.id, p.partition, p.started_at,
           p.id = $1 OR (p.heartbeat_at > now() - $5 * interval '1 second'
                         AND EXISTS (SELECT 1 FROM pg_stat_activity a
                                      WHERE a.pid = p.backend_pid)) AS member,
           p.id <> $1 AND p.heartbeat_at < now() - $6 * interval '1 second' AS gone,
           (SELECT min(schedule) FROM strand WHERE exitval IS NULL AND lease < now())
               AS oldest_due,
           now() AS at
      FROM respirate_process p
"""
_FORGET_LONG_GONE = """
    DELETE FROM respirate_process p
     WHERE heartbeat_at < now() - interval '1 hour'
       AND NOT EXISTS (SELECT 1 FROM strand s WHERE s.lease_holder = p.id)
"""


def partition_range(rank: int, count: int) -> tuple[uuid.UUID, uuid.UUID]:
    """Inclusive bounds of the rank-th of `count` equal slices of the uuid space (by its first
    32 bits, as the reference does)."""
    if not 0 <= rank < count:
        raise ValueError(f"rank {rank} is outside 0..{count - 1}")
    low = (rank * 2**32 // count) << 96
    high = MAX_UUID.int if rank == count - 1 else (((rank + 1) * 2**32 // count) << 96) - 1
    return uuid.UUID(int=low), uuid.UUID(int=high)


@dataclass
class View:
    """What the last heartbeat told us."""

    low: uuid.UUID = field(default=uuid.UUID(int=0))
    high: uuid.UUID = MAX_UUID
    members: int = 1
    rank: int = 0
    gone: list[uuid.UUID] = field(default_factory=list)
    oldest_due: datetime | None = None
    at: datetime | None = None


def view_of(rows: list[asyncpg.Record], me: uuid.UUID, partition: int | None) -> View:
    gone = [row["id"] for row in rows if row["gone"]]
    oldest = rows[0]["oldest_due"] if rows else None
    at = rows[0]["at"] if rows else None
    if partition is None:
        return View(gone=gone, oldest_due=oldest, at=at)
    live = sorted((row for row in rows if row["member"] and row["partition"] is not None),
                  key=lambda row: (row["partition"], row["started_at"], row["id"]))
    ids = [row["id"] for row in live]
    if me not in ids:
        ids.append(me)
    rank = ids.index(me)
    low, high = partition_range(rank, len(ids))
    return View(low, high, len(ids), rank, gone, oldest, at)


class Membership:
    """Heartbeats and LISTENs on its own connection; calls `on_wake` when work may be due."""

    def __init__(self, dsn: str, process_id: uuid.UUID, partition: int | None, *,
                 on_wake: Callable[[], None], heartbeat_interval: float = 2.0,
                 member_stale: float = 5.0, holder_stale: float = 10.0,
                 overdue_after: float = 5.0) -> None:
        self.dsn = dsn
        self.id = process_id
        self.partition = partition
        self.on_wake = on_wake
        self.heartbeat_interval = heartbeat_interval
        self.member_stale = member_stale
        self.holder_stale = holder_stale
        self.overdue_after = overdue_after
        self.view = View()
        self.last_beat = 0.0  # monotonic time of our last successful heartbeat
        self.ready = asyncio.Event()
        self._refresh = asyncio.Event()
        self._stop = asyncio.Event()
        self._connection: asyncpg.Connection | None = None
        self.beats = 0

    def beat_age(self) -> float:
        return time.monotonic() - self.last_beat if self.last_beat else float("inf")

    def _notified(self, _connection: object, _pid: int, channel: str, _payload: str) -> None:
        if channel == MEMBERS_CHANNEL:
            self._refresh.set()
        self.on_wake()

    async def run(self) -> None:
        """Keep the connection, the LISTENs and the heartbeats going until `stop`."""
        while not self._stop.is_set():
            try:
                await self._session()
            except Exception as error:
                # Never let the heartbeat die quietly: without it the process would stop
                # stepping (fenced) and never exit.
                if self._stop.is_set():
                    break
                if isinstance(error, OSError | asyncpg.PostgresError | asyncpg.InterfaceError):
                    log.warning("respirate membership connection lost", error=str(error))
                else:
                    log.exception("unexpected respirate membership error")
                await asyncio.sleep(1 + random.random())

    async def _session(self) -> None:
        connection = await asyncpg.connect(self.dsn, server_settings={
            "application_name": f"respirate/{ubid.to_ubid(self.id)}/membership"})
        self._connection = connection
        try:
            await connection.add_listener(DUE_CHANNEL, self._notified)
            await connection.add_listener(MEMBERS_CHANNEL, self._notified)
            await self.beat()
            await connection.execute("SELECT pg_notify($1, '')", MEMBERS_CHANNEL)
            self.on_wake()  # notifications may have been missed while we were away
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._refresh.wait(), self.heartbeat_interval)
                self._refresh.clear()
                if not self._stop.is_set():
                    await self.beat()
        finally:
            self._connection = None
            if not connection.is_closed():
                await connection.close(timeout=2)

    async def beat(self) -> None:
        connection = self._connection
        if connection is None:
            raise ConnectionError("membership has no connection")
        rows = await connection.fetch(_BEAT, self.id, self.partition, socket.gethostname(),
                                      os.getpid(), self.member_stale, self.holder_stale)
        self.last_beat = time.monotonic()
        self.beats += 1
        previous, self.view = self.view, view_of(rows, self.id, self.partition)
        if (previous.low, previous.high) != (self.view.low, self.view.high):
            log.info("respirate repartitioned", partition=self.partition,
                     rank=self.view.rank, members=self.view.members,
                     low=str(self.view.low), high=str(self.view.high))
            self.on_wake()
        if self.view.gone and self.view.gone != previous.gone:
            self.on_wake()
        if (self.view.oldest_due is not None and self.view.at is not None
                and (self.view.at - self.view.oldest_due).total_seconds() > self.overdue_after):
            self.on_wake()  # a strand waits too long somewhere: scan, whatever the ranges
        if self.beats % 600 == 0:
            await connection.execute(_FORGET_LONG_GONE)
        self.ready.set()

    async def leave(self) -> None:
        """Stop heartbeating; remove our row and tell the others to rebalance now."""
        self._stop.set()
        self._refresh.set()
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute("DELETE FROM respirate_process WHERE id = $1", self.id)
            await connection.execute("SELECT pg_notify($1, '')", MEMBERS_CHANNEL)
        finally:
            await connection.close(timeout=2)
