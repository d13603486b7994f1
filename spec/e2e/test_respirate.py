"""bin/respirate as real processes on a real database: duplicates, crashes, partitions,
database restarts, the watchdog, shutdown and bad arguments."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import db, migrations
from spec.support import strands
from spec.support.pgcluster import Cluster
from spec.support.processes import ROOT, RespirateProcess, eventually


@pytest.fixture
async def step_log(engine: AsyncEngine) -> AsyncIterator[None]:
    await strands.execute(engine, "CREATE TABLE IF NOT EXISTS test_step_log"
                          " (strand_id uuid NOT NULL, step integer NOT NULL)")
    await strands.execute(engine, "TRUNCATE test_step_log")
    yield
    await strands.execute(engine, "DROP TABLE test_step_log")


async def seed(engine: AsyncEngine, count: int, label: str, frame: dict[str, Any]) -> None:
    await strands.execute(
        engine, "INSERT INTO strand (id, prog, label, stack) SELECT gen_random_uuid(), 'Test',"
        " :label, jsonb_build_array(CAST(:frame AS jsonb)) FROM generate_series(1, :count)",
        label=label, frame=__import__("json").dumps(frame), count=count)


async def remaining(engine: AsyncEngine) -> int:
    return int(await strands.scalar(engine, "SELECT count(*) FROM strand"))


async def duplicates(engine: AsyncEngine) -> int:
    return int(await strands.scalar(engine, "SELECT count(*) FROM (SELECT strand_id, step"
                                    " FROM test_step_log GROUP BY 1, 2 HAVING count(*) > 1) d"))


def running(process: RespirateProcess) -> Callable[[], Any]:
    async def check() -> bool:
        return bool(process.events("respirate started"))
    return check


# -- several processes ------------------------------------------------------------------------

@pytest.mark.usefixtures("step_log")
async def test_two_processes_never_run_the_same_step_twice(
        engine: AsyncEngine, spawn: Callable[..., RespirateProcess]) -> None:
    await seed(engine, 300, "counted_hopper", {"hops": 8, "nap": 0.01})
    first, second = spawn("--partition", "1"), spawn("--partition", "2")

    async def done() -> bool:
        return await remaining(engine) == 0

    await eventually(done, 120, "300 strands finishing on two processes")
    assert await strands.scalar(engine, "SELECT count(*) FROM test_step_log") == 300 * 8
    assert await duplicates(engine) == 0
    for process in (first, second):
        process.signal(signal.SIGTERM)
        assert process.wait() == 0
    both_ran = [p for p in (first, second) if p.events("exited")]
    assert len(both_ran) == 2  # the work really was shared


async def test_smoke_strands_print_each_digit_exactly_once(
        engine: AsyncEngine, spawn: Callable[..., RespirateProcess]) -> None:
    await seed(engine, 200, "smoke_test_3", {})
    processes = [spawn("--partition", str(n)) for n in (1, 2, 3)]

    async def all_at_zero() -> bool:
        return int(await strands.scalar(
            engine, "SELECT count(*) FROM strand WHERE label = 'smoke_test_0'")) == 200

    await eventually(all_at_zero, 120, "200 smoke strands reaching smoke_test_0")
    for process in processes:
        process.signal(signal.SIGTERM)
        assert process.wait() == 0
    lines = [line for p in processes for line in p.stdout().splitlines()]
    assert len(lines) == 600 and len(set(lines)) == 600
    assert sorted(line.split()[0] for line in lines) == ["1"] * 200 + ["2"] * 200 + ["3"] * 200


@pytest.mark.usefixtures("step_log")
async def test_kill_9_of_one_process_the_other_finishes_and_nothing_commits_twice(
        engine: AsyncEngine, spawn: Callable[..., RespirateProcess]) -> None:
    await seed(engine, 200, "counted_hopper", {"hops": 10, "nap": 0.05})
    victim, survivor = spawn("--partition", "1"), spawn("--partition", "2")

    async def halfway() -> bool:
        return int(await strands.scalar(engine, "SELECT count(*) FROM test_step_log")) > 400

    await eventually(halfway, 60, "progress")
    victim.process.kill()
    victim.wait()

    async def done() -> bool:
        return await remaining(engine) == 0

    await eventually(done, 120, "the survivor finishing everything")
    assert await strands.scalar(engine, "SELECT count(*) FROM test_step_log") == 2000
    assert await duplicates(engine) == 0
    survivor.signal(signal.SIGTERM)
    assert survivor.wait() == 0


async def test_partitions_rebalance_within_5_s_when_a_middle_process_dies_and_rejoins(
        spawn: Callable[..., RespirateProcess]) -> None:
    """With the default membership settings; the bound is the protocol's (a dead process drops
    out at the next heartbeat of the others), read from the processes' own log times."""
    defaults = {"heartbeat_interval": 2.0, "member_stale": 5.0}
    first, middle, last = (spawn("--partition", str(n), **defaults) for n in (1, 2, 3))

    def latest(process: RespirateProcess) -> dict[str, Any]:
        events = process.events("respirate repartitioned")
        return events[-1] if events else {}

    async def members(count: int) -> bool:
        return all(latest(p).get("members") == count for p in (first, last))

    def seconds_after(moment: datetime, process: RespirateProcess) -> float:
        return (datetime.fromisoformat(latest(process)["timestamp"]) - moment).total_seconds()

    await eventually(lambda: members(3), 30, "three members")
    killed = datetime.now(UTC)
    middle.process.kill()
    middle.wait()
    await eventually(lambda: members(2), 30, "the middle partition's range being taken over")
    assert max(seconds_after(killed, p) for p in (first, last)) <= 5
    assert (latest(first)["low"], latest(first)["high"]) == (
        "00000000-0000-0000-0000-000000000000", "7fffffff-ffff-ffff-ffff-ffffffffffff")
    assert (latest(last)["low"], latest(last)["high"]) == (
        "80000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff")
    joined = datetime.now(UTC)
    rejoined = spawn("--partition", "2", **defaults)
    await eventually(lambda: members(3), 30, "the rejoin")
    assert max(seconds_after(joined, p) for p in (first, last)) <= 5
    assert latest(rejoined)["rank"] == 1
    for process in (first, last, rejoined):
        process.signal(signal.SIGTERM)
        assert process.wait() == 0


# -- the database going away -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("pg"), free_port())
    cluster.ensure()
    yield cluster
    cluster.stop()


async def test_postgres_restarted_mid_run_loses_no_strand(
        private_cluster: Cluster, spawn: Callable[..., RespirateProcess]) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{private_cluster.port}/postgres"
    await asyncio.to_thread(migrations.upgrade, url)
    engine = db.create_engine(url)
    try:
        await strands.execute(engine, "CREATE TABLE test_step_log"
                              " (strand_id uuid NOT NULL, step integer NOT NULL)")
        await seed(engine, 150, "counted_hopper", {"hops": 10, "nap": 0.1})
        process = spawn(url=url)

        async def started_work() -> bool:
            return int(await strands.scalar(engine, "SELECT count(*) FROM test_step_log")) > 100

        await eventually(started_work, 60, "progress before the restart")
        await asyncio.to_thread(private_cluster.restart)
        await engine.dispose()

        async def done() -> bool:
            try:
                return await remaining(engine) == 0
            except Exception as error:
                if db.is_disconnect(error):
                    return False
                raise

        try:
            await eventually(done, 60, "every strand finishing after the restart")
        except AssertionError:
            print(process.stderr()[-6000:])
            raise
        assert await strands.scalar(engine, "SELECT count(*) FROM test_step_log") == 1500
        assert await duplicates(engine) == 0
        assert process.process.poll() is None  # it rode the restart out
        process.signal(signal.SIGTERM)
        assert process.wait() == 0
    finally:
        await engine.dispose()


# -- the watchdog ---------------------------------------------------------------------------------

async def test_watchdog_ends_the_process_when_a_step_blocks_the_event_loop(
        engine: AsyncEngine, spawn: Callable[..., RespirateProcess]) -> None:
    await strands.create(engine, "loop_blocker", stack=[{"seconds": 30}])
    process = spawn(loop_block_limit=1.5)
    assert await asyncio.to_thread(process.wait, 60) == 2
    dump = process.stderr()
    assert "--BEGIN THREAD DUMP" in dump and "event loop blocked" in dump
    assert "loop_blocker" in dump  # the blocking frame is in the dump
    assert "--END THREAD DUMP" in dump


async def test_watchdog_ends_the_process_when_a_step_overruns(
        engine: AsyncEngine, spawn: Callable[..., RespirateProcess]) -> None:
    await strands.create(engine, "sleeper", stack=[{"seconds": 30}])
    process = spawn(step_timeout=1.5)
    assert await asyncio.to_thread(process.wait, 60) == 2
    assert "ran" in process.stderr() and "task " in process.stderr()


# -- shutdown and bad input ------------------------------------------------------------------

async def test_sigterm_exits_0_and_leaves_no_lease_held(
        engine: AsyncEngine, spawn: Callable[..., RespirateProcess]) -> None:
    await seed(engine, 20, "spinner", {})
    process = spawn("--workers", "4")

    async def busy() -> bool:
        return int(await strands.scalar(
            engine, "SELECT count(*) FROM strand WHERE lease_holder IS NOT NULL")) >= 4

    await eventually(busy, 30, "the spinners being claimed")
    process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 30) == 0
    assert await strands.scalar(engine, "SELECT count(*) FROM strand WHERE lease_holder IS NOT"
                                " NULL OR lease > now()") == 0
    assert process.events("respirate stopped")[0]["clean"] is True


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--partition", "0"], {}, "respirate: argument --partition: must be between 1 and 256, got 0"),
    (["--partition", "999"], {}, "respirate: argument --partition: must be between 1 and 256"),
    (["--workers", "many"], {}, "respirate: argument --workers: must be a whole number"),
    ([], {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"},
     "respirate: cannot reach the database at 127.0.0.1:1/nothing"),
    ([], {"DATABASE_URL": "mysql://x@y/z"}, "respirate: DATABASE_URL must be a postgresql://"),
    ([], {"RESPIRATE_MAX_SLEEP": "soon", "DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
     "respirate: RESPIRATE_MAX_SLEEP must be a number"),
])
def test_bad_arguments_give_one_clear_line_and_a_non_zero_exit(
        args: list[str], env: dict[str, str], message: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bin" / "respirate"), *args],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr




async def test_metrics_are_served_for_prometheus(engine: AsyncEngine,
                                                 spawn: Callable[..., RespirateProcess]) -> None:
    import urllib.request

    port = free_port()
    process = spawn("--metrics-port", str(port))
    await seed(engine, 20, "hop_entry", {})

    async def done() -> bool:
        return await remaining(engine) == 0

    await eventually(done, 30, "the strands finishing")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            return str(page.read().decode())

    text = await asyncio.to_thread(scrape)
    assert "respirate_steps_total 40.0" in text
    for series in ("respirate_scan_delay_seconds_bucket", "respirate_queue_delay_seconds_bucket",
                   "respirate_lease_delay_seconds_bucket", "respirate_total_delay_seconds_bucket",
                   "respirate_queue_depth", "respirate_running_steps",
                   "respirate_lease_acquisition_ratio", "respirate_leases_reclaimed_total"):
        assert series in text
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


async def test_a_host_added_with_ctl_is_bootstrapped_by_respirate(
        database_url: str, engine: AsyncEngine, ssh_host: Any,
        spawn: Callable[..., RespirateProcess]) -> None:
    import json

    from lib.ssh import agent
    from spec.bin.test_ctl import ctl

    await ctl(database_url, "location", "create", "lab")
    added = await ctl(database_url, "host", "add", "--location", "lab", "--address",
                      ssh_host.address, "--port", str(ssh_host.port), "--accept-new",
                      "--python", ssh_host.target.python, "--json")
    ssh_host.authorize(ssh_host.client_public, json.loads(added.stdout)["authorize"])
    process = spawn()

    async def ready() -> bool:
        return bool(await strands.scalar(engine, "SELECT state FROM vm_host") == "ready")

    await eventually(ready, 60, "the host becoming ready")
    assert await agent.installed_version(ssh_host.target) == agent.version()
    listed = await ctl(database_url, "host", "list")
    assert "ready" in listed.stdout
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
