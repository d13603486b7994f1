"""bin/bench api: POST create-version through bin/api at 32 concurrent clients on loopback.

Every request captures a fresh label from its own stopped VM, in one project (so all of them
take that project's capture lock), and is answered 200 with a `creating` version. The same-run
baseline is GET /openapi.json at the same concurrency: the cost of the server, the client and
the loopback alone, with no database work.

    --json lines: api.create_version_p50|p99 (ms), api.errors (count), api.create_version_rps,
                  api.floor_p50|p99 (ms)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from lib import crypto, db, ubid
from model import api_token, machine_image_store, vm, vm_host
from spec.bench.common import Report, fresh_database
from spec.support.api_server import api_server

CLIENTS = int(os.environ.get("BENCH_API_CLIENTS", "32"))
PER_CLIENT = 30


async def seed(url: str, vms: int) -> tuple[str, str, list[str]]:
    """A project with a store, an image, `vms` stopped VMs on a host, and a token."""
    engine = db.create_engine(url, pool_size=1)
    project_id, location_id = ubid.generate(ubid.TYPE_PROJECT), ubid.generate(ubid.TYPE_LOCATION)
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO location (id, name) VALUES (:id, 'lab')"),
                                 {"id": location_id})
        await connection.execute(text("INSERT INTO project (id, name, version_quota) VALUES"
                                      " (:id, 'bench', 1000000)"), {"id": project_id})
        await machine_image_store.create(connection, location_id=location_id, project_id=None,
                                         kind="directory", path="/srv/images",
                                         master_key=crypto.master_key())
        host_id, _ = await vm_host.assemble(connection, location="lab", address="unused",
                                            accept_new=True, master_key=crypto.master_key())
        await connection.execute(text(
            "INSERT INTO machine_image (id, project_id, location_id, name, arch)"
            " VALUES (:id, :project_id, :location_id, 'base', 'x64')"),
            {"id": ubid.generate(ubid.TYPE_MACHINE_IMAGE), "project_id": project_id,
             "location_id": location_id})
        ids = [ubid.to_ubid(await vm.create(
            connection, project_id=project_id, location_id=location_id, vm_host_id=host_id,
            name=f"vm{n}", disks=[(f"/var/vms/{n}.raw", 1 << 30)])) for n in range(vms)]
        _, token = await api_token.create(connection, project_id)
    await engine.dispose()
    return ubid.to_ubid(project_id), token, ids


async def clients(base: str, token: str, requests: list[tuple[str, dict[str, Any]]] | None,
                  count: int) -> tuple[list[float], int, float]:
    """Send `requests` (POSTs; None: GET /openapi.json `count` times) from CLIENTS clients;
    returns latencies in ms, the number of unexpected answers and the wall time."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
    for item in requests or [None] * count:  # type: ignore[list-item]
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        async def one_client() -> None:
            nonlocal errors
            while not queue.empty():
                item = queue.get_nowait()
                started = time.perf_counter()
                if item is None:
                    response = await client.get("/openapi.json")
                else:
                    response = await client.post(item[0], json=item[1])
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
        wall = time.perf_counter() - started
    return latencies, errors, wall


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/bench api")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--per-client", type=int, default=PER_CLIENT)
    args = parser.parse_args()
    os.environ.setdefault("IMAGECP_MASTER_KEY", crypto.generate_master_key())
    report = Report(args.json)
    total = CLIENTS * args.per_client
    warmup = CLIENTS
    with fresh_database() as url, tempfile.TemporaryDirectory() as logs:
        project, token, vms = await seed(url, total + warmup)
        path = f"/project/{project}/location/lab/machine-image/base/version"
        requests = [(f"{path}/v{n}", {"vm": vms[n]}) for n in range(total + warmup)]
        with api_server(url, Path(logs) / "api.log") as base:
            await clients(base, token, None, 4 * CLIENTS)  # warm both paths up
            _, warm_errors, _ = await clients(base, token, requests[:warmup], 0)
            floor, _, _ = await clients(base, token, None, total)
            latencies, errors, wall = await clients(base, token, requests[warmup:], 0)
    report.add("api.create_version_p50", statistics.median(latencies), "ms",
               f"{total} POSTs, {CLIENTS} clients")
    report.add("api.create_version_p99", percentile(latencies, 0.99), "ms", "target <= 50")
    report.add("api.errors", errors + warm_errors, "count", "target 0")
    report.add("api.create_version_rps", total / wall, "req/s")
    report.add("api.floor_p50", statistics.median(floor), "ms", "GET /openapi.json, same run")
    report.add("api.floor_p99", percentile(floor, 0.99), "ms")


if __name__ == "__main__":
    asyncio.run(main())
