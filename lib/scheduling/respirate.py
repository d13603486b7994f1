"""The respirate daemon: membership, dispatcher, workers, watchdog and metrics, wired together.

`serve` returns the process exit status: 0 after a clean shutdown (SIGTERM/SIGINT: stop
claiming, let running steps finish within the grace period, hand every lease back), 1 when
the grace period ran out. The watchdog ends the process with 2 on its own.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.engine import URL

from lib import db, ubid
from lib.log import get_logger
from lib.scheduling.dispatcher import Dispatcher, Settings
from lib.scheduling.membership import Membership
from lib.scheduling.metrics import RespirateMetrics
from lib.scheduling.watchdog import Watchdog

log = get_logger(__name__)
TYPE_RESPIRATE = "rp"


class StartupError(Exception):
    """Respirate cannot start; the message is the one line an operator needs."""


def raw_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _check_database(url: URL) -> None:
    where = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
    try:
        connection = await asyncpg.connect(raw_dsn(url), timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        raise StartupError(f"cannot reach the database at {where}: {error}") from None
    try:
        migrated = await connection.fetchval("SELECT to_regclass('respirate_process')")
    finally:
        await connection.close()
    if migrated is None:
        raise StartupError(f"the database at {where} is not migrated: run bin/migrate")


@dataclass
class Respirate:
    url: URL
    settings: Settings
    metrics_port: int | None = None
    handle_signals: bool = True
    dispatcher: Dispatcher | None = field(default=None, init=False)
    membership: Membership | None = field(default=None, init=False)

    def stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()

    async def serve(self) -> int:
        await _check_database(self.url)
        process_id = ubid.generate(TYPE_RESPIRATE)
        engine = db.create_engine(self.url, pool_size=self.settings.workers + 4,
                                  application_name="respirate")
        metrics = RespirateMetrics()
        if self.metrics_port is not None:
            metrics.serve(self.metrics_port)
        watchdog = Watchdog(step_timeout=self.settings.step_timeout,
                            loop_block_limit=self.settings.loop_block_limit)
        wake_target: list[Dispatcher] = []
        membership = Membership(
            raw_dsn(self.url), process_id, self.settings.partition,
            on_wake=lambda: wake_target[0].wake() if wake_target else None,
            heartbeat_interval=self.settings.heartbeat_interval,
            member_stale=self.settings.member_stale, holder_stale=self.settings.holder_stale,
            overdue_after=self.settings.overdue_after)
        dispatcher = Dispatcher(engine, self.settings, process_id, membership, metrics, watchdog)
        wake_target.append(dispatcher)
        self.dispatcher, self.membership = dispatcher, membership
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, dispatcher.stop)
        watchdog.start()
        log.info("respirate started", process=ubid.to_ubid(process_id),
                 partition=self.settings.partition, workers=self.settings.workers)
        heart = asyncio.create_task(membership.run(), name="membership")
        workers = [asyncio.create_task(dispatcher.worker(i), name=f"worker-{i}")
                   for i in range(self.settings.workers)]
        scan = asyncio.create_task(dispatcher.scan_loop(), name="scan")
        try:
            with_deadline = await self._until_stopped(dispatcher, scan, workers)
        finally:
            watchdog.stop()
            await membership.leave()
            heart.cancel()
            await asyncio.gather(heart, return_exceptions=True)
            await engine.dispose()
        log.info("respirate stopped", clean=with_deadline)
        return 0 if with_deadline else 1

    async def _until_stopped(self, dispatcher: Dispatcher, scan: asyncio.Task[None],
                             workers: list[asyncio.Task[None]]) -> bool:
        await asyncio.wait([scan, *workers], return_when=asyncio.FIRST_COMPLETED)
        dispatcher.stop()  # a task ended on its own (an unexpected error): stop them all
        await asyncio.gather(scan, return_exceptions=True)
        await dispatcher.drain()
        for _ in workers:
            dispatcher.queue.put_nowait(None)
        done, pending = await asyncio.wait(workers, timeout=self.settings.shutdown_grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        try:
            released = await dispatcher.release_all()
        except Exception as error:
            log.error("respirate could not hand back its leases", error=str(error))
            return False
        if released:
            log.info("respirate handed back leases at shutdown", count=released)
        if pending:
            log.error("respirate shutdown timed out", unfinished=len(pending))
            return False
        if scan.exception() is not None:
            return False
        return all(task.exception() is None for task in done)

