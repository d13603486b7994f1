"""bin/bench engine: respirate measured against the bare SQL of a step, in the same run.

Parts (--only NAME, repeatable): throughput (with the SQL ceiling), lateness, idle, recovery,
scale. Numbers are ratios against baselines measured here, on this machine, now.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from lib.config import normalize_database_url
from lib.scheduling.respirate import raw_dsn
from spec.bench.common import Report, fresh_database
from spec.support.processes import RespirateProcess

STRANDS = 2000
HOPS = 10
LOG_DIR = Path(tempfile.mkdtemp(prefix="bench-engine-"))


def dsn(url: str) -> str:
    return raw_dsn(normalize_database_url(url))


async def seed(connection: asyncpg.Connection, count: int, label: str, frame: dict[str, Any],
               schedule: str = "now()", prog: str = "Test") -> None:
    await connection.execute(
        "INSERT INTO strand (id, prog, label, stack, schedule)"
        " SELECT gen_random_uuid(), $4, $1, jsonb_build_array($2::jsonb),"
        f" {schedule} FROM generate_series(1, $3)", label, json.dumps(frame), count, prog)


async def transactions(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database"
        " WHERE datname = current_database()"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {limit} s")
        await asyncio.sleep(0.02)


async def started(process: RespirateProcess) -> None:
    async def ready() -> bool:
        if process.process.poll() is not None:
            raise RuntimeError(f"respirate exited: {process.stderr()[-2000:]}")
        return bool(process.events("respirate started")) and "respirate repartitioned" \
            not in process.stderr()[-1:]
    await until(ready, 30, "respirate start")
    await asyncio.sleep(0.5)  # the first heartbeat and scan


def stop(process: RespirateProcess) -> None:
    process.signal(signal.SIGTERM)
    if process.wait(60) != 0:
        raise RuntimeError(f"respirate did not stop cleanly: {process.stderr()[-2000:]}")


# -- throughput and its ceiling -----------------------------------------------------------------

async def run_hoppers(url: str, active: int, napping: int, workers: int) -> dict[str, float]:
    """Steps/s of one respirate process over `active` strands × HOPS hops."""
    connection = await asyncpg.connect(dsn(url))
    try:
        if napping:
            await seed(connection, napping, "napper", {}, "now() + interval '1 day'")
        await connection.execute("VACUUM ANALYZE strand")
        await connection.execute("CHECKPOINT")  # every measured run starts from a clean slate
        process = RespirateProcess(url, LOG_DIR, "--workers", str(workers),
                                   settings={"jitter": "false"})
        await started(process)
        cpu_before = cpu_seconds(process.pid)
        polls = 0
        before = await transactions(connection)
        start = time.monotonic()
        await seed(connection, active, "bounce", {"hops": HOPS}, prog="Test.Hopper")

        async def done() -> bool:
            nonlocal polls
            polls += 1
            return int(await connection.fetchval(
                "SELECT count(*) FROM strand WHERE prog = 'Test.Hopper'")) == 0

        await until(done, 600, "the hoppers finishing")
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(process.pid) - cpu_before
        stop(process)
        await asyncio.sleep(1.2)  # let the statistics collector catch up
        commits = await transactions(connection) - before - polls - 2
    finally:
        await connection.close()
    steps = active * HOPS
    return {"steps_per_second": steps / elapsed, "commits_per_step": commits / steps,
            "cpu_ms_per_step": cpu * 1000 / steps}


CEILING_STEP = """
    UPDATE strand
       SET stack = jsonb_set(stack, '{0,n}', to_jsonb(COALESCE((stack->0->>'n')::int, 0) + 1)),
           exitval = CASE WHEN COALESCE((stack->0->>'n')::int, 0) + 1 >= $1
                          THEN '{}'::jsonb END,
           try = 0
     WHERE id = (SELECT id FROM strand WHERE exitval IS NULL AND schedule < now()
                  AND lease < now() ORDER BY schedule LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED)
    RETURNING id
"""


async def sql_ceiling(url: str, clients: int) -> float:
    """Steps/s of the bare SQL of a step (claim + advance in one autocommit statement)."""
    seeder = await asyncpg.connect(dsn(url))
    await seed(seeder, STRANDS, "hopper", {})
    await seeder.execute("VACUUM ANALYZE strand")
    await seeder.execute("CHECKPOINT")
    await seeder.close()
    connections = [await asyncpg.connect(dsn(url)) for _ in range(clients)]
    statements = [await c.prepare(CEILING_STEP) for c in connections]
    done = 0

    async def client(statement: Any) -> None:
        nonlocal done
        while await statement.fetchval(HOPS) is not None:
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(client(s) for s in statements))
    elapsed = time.monotonic() - start
    for c in connections:
        await c.close()
    if done != STRANDS * HOPS:
        raise RuntimeError(f"the ceiling loop ran {done} steps, expected {STRANDS * HOPS}")
    return done / elapsed


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


async def throughput(report: Report, workers: int, repeats: int = 3) -> None:
    """Ours and the ceiling alternate, each `repeats` times on a fresh database; medians."""
    ours, ceilings = [], []
    for _ in range(repeats):
        with fresh_database() as url:
            sync = await (await asyncpg.connect(dsn(url))).fetchval("SHOW synchronous_commit")
            ours.append(await run_hoppers(url, STRANDS, 0, workers))
        with fresh_database() as url:
            ceilings.append(await sql_ceiling(url, 8))
    steps = median_of(ours, "steps_per_second")
    ceiling = statistics.median(ceilings)
    note = (f"{STRANDS} strands x {HOPS} hops, {workers} workers, synchronous_commit={sync},"
            f" median of {repeats}")
    report.add("engine.throughput", steps, "steps/s", note)
    report.add("engine.ceiling", ceiling, "steps/s", "bare SQL step, 8 asyncpg clients")
    report.add("engine.ratio_to_ceiling", steps / ceiling, "x")
    report.add("engine.commits_per_step", median_of(ours, "commits_per_step"), "commits")
    report.add("engine.cpu_per_step", median_of(ours, "cpu_ms_per_step"), "ms",
               "respirate process")


async def scale(report: Report, workers: int, repeats: int = 2) -> None:
    """10,000 active strands among 100,000 against 2,000 alone, alternating; medians."""
    small, big = [], []
    for _ in range(repeats):
        with fresh_database() as url:
            small.append(await run_hoppers(url, STRANDS, 0, workers))
        with fresh_database() as url:
            big.append(await run_hoppers(url, 10_000, 90_000, workers))
    big_rate = median_of(big, "steps_per_second")
    report.add("engine.scale_throughput", big_rate, "steps/s",
               f"10,000 hopping among 100,000 strands, median of {repeats}")
    report.add("engine.scale_ratio", big_rate / median_of(small, "steps_per_second"), "x",
               "vs 2,000 strands alone, measured alongside")


# -- lateness -------------------------------------------------------------------------------------

async def lateness(report: Report, workers: int, seconds: float = 30.0) -> None:
    rate = 200.0
    mean_nap = 0.15
    with fresh_database() as url:
        connection = await asyncpg.connect(dsn(url))
        process = RespirateProcess(url, LOG_DIR, "--workers", str(workers))
        await started(process)
        await seed(connection, round(rate * mean_nap), "paced_napper",
                   {"low": 0.05, "high": 0.25})
        await asyncio.sleep(seconds)
        stop(process)
        await connection.close()
    late = [float(line.split()[1]) * 1000 for line in process.stdout().splitlines()
            if line.startswith("late ")]
    late = late[len(late) // 10:]  # the first tenth warms up
    cuts = statistics.quantiles(late, n=100, method="inclusive")
    offered = len(late) / (seconds * 0.9)
    note = f"{offered:.0f} steps/s offered, naps of 50-250 ms"
    report.add("engine.lateness_p50", cuts[49], "ms", note)
    report.add("engine.lateness_p95", cuts[94], "ms")
    report.add("engine.lateness_p99", cuts[98], "ms")


# -- idle ---------------------------------------------------------------------------

async def idle(report: Report, seconds: float = 60.0) -> None:
    with fresh_database() as url:
        connection = await asyncpg.connect(dsn(url))
        await seed(connection, 10_000, "napper", {}, "now() + interval '1 hour'")
        await connection.execute("VACUUM ANALYZE strand")  # no autovacuum inside the window
        process = RespirateProcess(url, LOG_DIR)
        await started(process)
        await asyncio.sleep(3)
        before = await transactions(connection)
        await asyncio.sleep(seconds)
        await asyncio.sleep(1.2)  # statistics are flushed at most once a second
        after = await transactions(connection)
        stop(process)
        await connection.close()
    report.add("engine.idle_queries", (after - before - 1) / seconds, "queries/s",
               f"10,000 strands napping, {seconds:.0f} s")


# -- recovery -----------------------------------------------------------------------

async def recovery(report: Report, workers: int) -> None:
    with fresh_database() as url:
        connection = await asyncpg.connect(dsn(url))
        await connection.execute(
            "CREATE TABLE test_step_log (strand_id uuid NOT NULL, step integer NOT NULL,"
            " at timestamptz DEFAULT clock_timestamp())")
        await seed(connection, 400, "counted_hopper", {"hops": 100000, "nap": 0.2})
        victim = RespirateProcess(url, LOG_DIR, "--partition", "1", "--workers", str(workers))
        survivor = RespirateProcess(url, LOG_DIR, "--partition", "2", "--workers", str(workers))
        await started(victim)
        await started(survivor)
        await asyncio.sleep(5)
        victim.process.kill()
        killed = time.monotonic()
        held = [row["id"] for row in await connection.fetch(
            "SELECT s.id FROM strand s JOIN respirate_process p ON p.id = s.lease_holder"
            " WHERE p.pid = $1", victim.pid)]
        if not held:
            raise RuntimeError("the killed process held no strand: nothing to measure")
        killed_at = await connection.fetchval("SELECT clock_timestamp()")

        async def all_ran_again() -> bool:
            return int(await connection.fetchval(
                "SELECT count(DISTINCT strand_id) FROM test_step_log"
                " WHERE strand_id = ANY($1) AND at > $2", held, killed_at)) == len(held)

        await until(all_ran_again, 120, "the killed process's strands running again")
        seconds = time.monotonic() - killed
        stop(survivor)
        duplicates = int(await connection.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM test_step_log GROUP BY strand_id, step"
            " HAVING count(*) > 1) d"))
        await connection.close()
    report.add("engine.recovery", seconds, "s",
               f"{len(held)} strands held by the killed process")
    report.add("engine.duplicate_steps", duplicates, "count")


async def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/bench engine")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", action="append",
                        choices=["throughput", "lateness", "idle", "recovery", "scale"])
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    parts = args.only or ["throughput", "lateness", "idle", "recovery", "scale"]
    report = Report(args.json)
    if not args.json:
        print(f"engine benchmark on {os.cpu_count()} cores (logs in {LOG_DIR})")
    if "throughput" in parts:
        await throughput(report, args.workers)
    if "lateness" in parts:
        await lateness(report, args.workers)
    if "idle" in parts:
        await idle(report)
    if "recovery" in parts:
        await recovery(report, args.workers)
    if "scale" in parts:
        await scale(report, args.workers)


if __name__ == "__main__":
    random.seed(1)
    try:
        asyncio.run(main())
    except RuntimeError as error:
        sys.exit(f"bin/bench engine: {error}")
