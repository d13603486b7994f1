"""The dispatcher: claims due strands in batches and runs them on a bounded pool of workers.

One scan loop claims what the pool can take (`FOR NO KEY UPDATE SKIP LOCKED`, lease and
holder written in the same statement), then sleeps until the earliest due schedule, a
NOTIFY (new strand, wake, membership change) or a worker freeing a slot. Idle, it makes no
queries at all; the heartbeat is the only traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lib import db, ssh, ubid
from lib.log import get_logger
from lib.scheduling import lease
from lib.scheduling.flow import Hop, LeaseLost, Nap, Outcome, StrandFailed
from lib.scheduling.membership import MAX_UUID, Membership
from lib.scheduling.metrics import RespirateMetrics
from lib.scheduling.runner import StrandRunner
from lib.scheduling.state import StrandState
from lib.scheduling.transaction import Transactions
from lib.scheduling.watchdog import Watchdog

log = get_logger(__name__)
MIN_IDLE_SLEEP = 0.05
LOCKED_MARGIN = timedelta(milliseconds=10)


@dataclass(frozen=True)
class Settings:
    workers: int = 8
    partition: int | None = None
    run_budget: float = 30.0
    lease_seconds: float = 120.0
    heartbeat_interval: float = 2.0
    member_stale: float = 5.0  # no beat this long (or its connection gone): out of the split
    holder_stale: float = 10.0  # no beat for this long: its leases are reclaimed
    fence_after: float = 7.0  # our own last beat this old: start no more steps
    overdue_after: float = 5.0  # a due strand this late anywhere: scan every range
    max_sleep: float = 60.0
    step_timeout: float = 91.0
    loop_block_limit: float = 7.0
    shutdown_grace: float = 10.0
    jitter: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str], **given: Any) -> Settings:
        """Settings from `given`, then `RESPIRATE_<FIELD>` variables (tuning and tests)."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = env.get(f"RESPIRATE_{item.name.upper()}")
            if raw is None or item.name in given:
                continue
            try:
                values[item.name] = raw.lower() in ("1", "true", "yes") if item.type == "bool" \
                    else float(raw) if item.type == "float" else int(raw)
            except ValueError:
                raise ValueError(f"RESPIRATE_{item.name.upper()} must be a number, got {raw!r}"
                                 ) from None
        return cls(**values, **given)


@dataclass
class Claimed:
    state: StrandState
    due_at: datetime
    claimed_at: float  # monotonic


class Dispatcher:
    def __init__(self, engine: AsyncEngine, settings: Settings, process_id: uuid.UUID,
                 membership: Membership, metrics: RespirateMetrics, watchdog: Watchdog) -> None:
        self.engine = engine
        self.settings = settings
        self.id = process_id
        self.membership = membership
        self.metrics = metrics
        self.watchdog = watchdog
        self.queue: asyncio.Queue[Claimed | None] = asyncio.Queue()
        self.held: set[uuid.UUID] = set()  # claimed by us: queued or running
        self.capacity = settings.workers * 2
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._next_due: datetime | None = None
        self._orphans = False  # a lost connection may have left leases we no longer track

    # -- signals from outside ----------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        if not self._stop.is_set():
            log.info("respirate stopping", held=len(self.held))
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def may_step(self) -> bool:
        return not self.stopping and self.membership.beat_age() < self.settings.fence_after

    def _claim_shelf_life(self) -> float:
        """How long a claimed strand may wait for a worker: its run (at most step_timeout,
        the watchdog's limit) must end before the lease does."""
        return max(0.0, self.settings.lease_seconds - self.settings.step_timeout - 5)

    def _hint(self, when: datetime) -> None:
        if self._next_due is None or when < self._next_due:
            self._next_due = when
            self._wake.set()

    # -- the scan loop -----------------------------------------------------------------------

    async def scan_loop(self) -> None:
        while not self.stopping:
            raw: asyncpg.Connection | None = None
            try:
                async with self._connect("scan") as connection:
                    raw = (await Transactions.of(connection)).raw
                    while not self.stopping:
                        # Cleared before anything is read: a wake during this round (a
                        # worker's orphan, a NOTIFY) survives to cut the round's sleep short.
                        self._wake.clear()
                        self._next_due = None  # so any hint during the round wakes us
                        if self._orphans:  # set by us or by a worker that lost its connection
                            await self._release_orphans(raw)
                        await self._scan_once(raw)
            except Exception as error:
                # The scan loop must outlive any error: without it nothing is claimed, and
                # orphaned leases are never handed back.
                if db.is_disconnect(error, raw):
                    log.warning("respirate scan connection lost", error=str(error))
                else:
                    log.exception("unexpected respirate scan error")
                self._orphans = True
                await self._pause(1 + random.random())

    @contextlib.asynccontextmanager
    async def _connect(self, role: str) -> AsyncIterator[AsyncConnection]:
        """A connection named for pg_stat_activity: respirate/<process>/<role>."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT set_config('application_name', :name, false)"),
                                     {"name": f"respirate/{ubid.to_ubid(self.id)}/{role}"})
            await connection.commit()
            yield connection

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0))

    def _range(self) -> tuple[uuid.UUID, uuid.UUID]:
        view = self.membership.view
        if self.settings.partition is None:
            return uuid.UUID(int=0), MAX_UUID
        if (view.oldest_due is not None and view.at is not None
                and (view.at - view.oldest_due).total_seconds() > self.settings.overdue_after):
            return uuid.UUID(int=0), MAX_UUID  # somebody's range is not being served
        return view.low, view.high

    async def _scan_once(self, raw: asyncpg.Connection) -> None:
        free = self.capacity - len(self.held)
        if free <= 0 or not self.may_step():
            await self._sleep(0.5 if free > 0 else self.settings.max_sleep)
            return
        low, high = self._range()
        claiming_since = datetime.now(UTC)
        started = time.monotonic()
        rows = await raw.fetch(lease.CLAIM, low, high, self.membership.view.gone, free,
                               self.settings.lease_seconds, self.id, self.settings.jitter)
        statement = time.monotonic() - started
        if rows:
            self._enqueue(rows, statement)
        if len(rows) == free:
            return  # maybe more is due; the next round waits for a free slot
        self._next_due = await raw.fetchval(lease.NEXT_DUE, low, high,
                                            self.membership.view.gone)
        seconds = self._seconds_until(self._next_due)
        if (not rows and self._next_due is not None
                and self._next_due < claiming_since - LOCKED_MARGIN):
            # It was due before we tried, and still nothing could be claimed: its row is
            # locked (a parent's reap runs it). Do not spin; a strand that only just became
            # due is claimed at once.
            seconds = MIN_IDLE_SLEEP
        await self._sleep(seconds)

    def _seconds_until(self, when: datetime | None) -> float:
        if when is None:
            return self.settings.max_sleep
        seconds = (when - datetime.now(UTC)).total_seconds()
        return min(max(seconds, 0.0), self.settings.max_sleep)

    def _enqueue(self, rows: list[asyncpg.Record], statement: float) -> None:
        now = time.monotonic()
        for row in sorted(rows, key=lambda row: row["due_at"]):
            state = lease.state_of(row, self.id)
            self.held.add(state.id)
            self.queue.put_nowait(Claimed(state, row["due_at"], now))
        self.metrics.claimed(len(rows), sum(1 for row in rows if row["reclaimed"]), statement,
                             [(row["claimed_at"] - row["due_at"]).total_seconds()
                              for row in rows])
        self.metrics.queue_depth.set(self.queue.qsize())

    async def _release_orphans(self, raw: asyncpg.Connection) -> None:
        self._orphans = False  # before the query: a flag raised meanwhile is kept
        status = await raw.execute(lease.RELEASE_ORPHANS, self.id, list(self.held))
        count = int(status.split()[-1])
        if count:
            log.info("respirate released orphaned leases", count=count)

    # -- workers -----------------------------------------------------------------------------

    async def worker(self, index: int) -> None:
        while True:
            raw: asyncpg.Connection | None = None
            try:
                async with self._connect(f"worker-{index}") as connection:
                    runner = StrandRunner(connection, holder=self.id,
                                          lease_seconds=self.settings.lease_seconds,
                                          jitter=self.settings.jitter, may_step=self.may_step)
                    raw = (await runner.transactions()).raw
                    while (claimed := await self.queue.get()) is not None:
                        await self._run(runner, claimed)
                    return
            except Exception as error:
                if db.is_disconnect(error, raw):
                    log.warning("respirate worker connection lost", worker=index,
                                error=str(error))
                else:
                    log.exception("unexpected respirate worker error", worker=index)
                self._orphans = True
                self._wake.set()
                await asyncio.sleep(1 + random.random())

    async def _run(self, runner: StrandRunner, claimed: Claimed) -> None:
        state = claimed.state
        start = time.monotonic()
        if start - claimed.claimed_at > self._claim_shelf_life():
            # Waited so long that the lease could run out during the run: hand it back and
            # let a fresh claim take it.
            await (await runner.transactions()).raw.execute(lease.RELEASE, *lease.fence(state))
            self.held.discard(state.id)
            self._wake.set()
            return
        self.metrics.queue_depth.set(self.queue.qsize())
        self.metrics.started(start - claimed.claimed_at,
                             (datetime.now(UTC) - claimed.due_at).total_seconds())
        self.metrics.running.inc()
        self.watchdog.begin(runner, ubid.to_ubid(state.id))
        steps_before = runner.steps
        outcome: Outcome | None = None
        lost = False
        try:
            # SSH connections live for this run; commands end before the watchdog would fire.
            async with ssh.run_scope(until=start + self.settings.step_timeout):
                outcome = await runner.run_leased(state, self.settings.run_budget)
        except StrandFailed:
            pass  # logged by the runner; retried after its backoff
        except LeaseLost:
            lost = True
            log.error("lease violated", strand=ubid.to_ubid(state.id))
        except Exception as error:
            if db.is_disconnect(error, (await runner.transactions()).raw):
                raise
            log.exception("unusual exception terminates strand run",
                          strand=ubid.to_ubid(state.id), prog_label=f"{state.prog}.{state.label}")
        finally:
            self.watchdog.end(runner)
            self.metrics.running.dec()
            self.metrics.finished(runner.steps - steps_before, lost)
            self.held.discard(state.id)
            self._after(state, outcome)
            self.metrics.maybe_log(self.queue.qsize(), len(self.held) - self.queue.qsize())

    def _after(self, state: StrandState, outcome: Outcome | None) -> None:
        """Tell the scan loop when this strand is next due, without asking the database."""
        if isinstance(outcome, Nap):
            self._hint(state.schedule)
        elif isinstance(outcome, Hop) or outcome is None:
            self._hint(datetime.now(UTC) if outcome else state.schedule)
        if len(self.held) == self.capacity - 1:
            self._wake.set()  # the pool was full: a slot is free again

    async def release_all(self) -> int:
        """After the workers have stopped: hand back every lease this process still holds."""
        async with self.engine.connect() as connection:
            raw = (await Transactions.of(connection)).raw
            status = await raw.execute(lease.RELEASE_ORPHANS, self.id, [])
        return int(status.split()[-1])

    async def drain(self) -> None:
        """On shutdown: hand back the leases of strands still waiting in the queue."""
        waiting = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                waiting.append(item.state)
        if not waiting:
            return
        async with self.engine.connect() as connection:
            raw = (await Transactions.of(connection)).raw
            for state in waiting:
                await raw.execute(lease.RELEASE, *lease.fence(state))
                self.held.discard(state.id)
        log.info("respirate released queued strands", count=len(waiting))
