"""bin/bench api: POST create-version through bin/api at 32 concurrent clients on loopback.

The load comes from `wrk` (installed from the OS packages when missing), so the measurement
is of the server, not of a Python client sharing its two cores. Every request captures a new
label from its own stopped VM in one project (so all of them take that project's capture
lock) and must be answered 200. The same-run baseline is GET /openapi.json at the same
concurrency: the server and loopback alone, with no database work.

    --json lines: api.create_version_p50|p99 (ms), api.errors (count), api.create_version_rps,
                  api.floor_p50|p99 (ms)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import text

from lib import crypto, db, ubid
from model import api_token, machine_image_store, vm_host
from spec.bench.common import Report, fresh_database
from spec.support.api_server import api_server

CLIENTS = 32
THREADS = 2
SECONDS = 8
VMS_PER_THREAD = 6000  # more than a thread can use in SECONDS

SCRIPT = """
local vms = {}
for line in io.lines("%(vms)s") do vms[#vms + 1] = line end
local threads, n = 0, 0
function setup(thread) thread:set("first", threads * %(per_thread)d); threads = threads + 1 end
function init(args) n = 0 end
function request()
  n = n + 1
  local i = first + n
  return wrk.format("POST", "%(path)s/v" .. i, {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %(token)s"}, '{"vm": "' .. vms[i] .. '"}')
end
"""


async def seed(url: str, vms: int) -> tuple[str, str, list[str]]:
    """A project with a store, an image, `vms` stopped VMs on a host, and a token."""
    engine = db.create_engine(url, pool_size=1)
    project_id, location_id = ubid.generate(ubid.TYPE_PROJECT), ubid.generate(ubid.TYPE_LOCATION)
    ids = [ubid.generate(ubid.TYPE_VM) for _ in range(vms)]
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
        # Bulk, with the rows vm.create writes: the VM, its one disk and its parked strand.
        await connection.execute(text(
            "INSERT INTO vm (id, project_id, location_id, vm_host_id, name, arch)"
            " SELECT id, :project_id, :location_id, :host_id, 'vm' || n, 'x64'"
            " FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS t(id, n)"),
            {"ids": ids, "project_id": project_id, "location_id": location_id,
             "host_id": host_id})
        await connection.execute(text(
            "INSERT INTO vm_storage_volume (id, vm_id, disk_index, path, size_bytes)"
            " SELECT gen_random_uuid(), id, 0, '/var/vms/' || id || '.raw', 1073741824"
            " FROM unnest(CAST(:ids AS uuid[])) AS t(id)"), {"ids": ids})
        await connection.execute(text(
            "INSERT INTO strand (id, prog, label, schedule) SELECT id, 'Vm.Nexus', 'stopped',"
            " now() + interval '1 year' FROM unnest(CAST(:ids AS uuid[])) AS t(id)"),
            {"ids": ids})
        _, token = await api_token.create(connection, project_id)
    async with engine.connect() as connection:  # planner statistics, as a live database has
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("ANALYZE"))
    await engine.dispose()
    return ubid.to_ubid(project_id), token, [ubid.to_ubid(i) for i in ids]


def milliseconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, seconds: int, script: Path | None = None) -> dict[str, float]:
    """Run wrk; returns p50, p99 (ms), requests/s and the count of failed answers."""
    command = ["wrk", f"-t{THREADS}", f"-c{CLIENTS}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    return {"p50": milliseconds(latency["50"]), "p99": milliseconds(latency["99"]),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "errors": (int(failed.group(1)) if failed else 0)
            + (sum(map(int, socket.groups())) if socket else 0)}


async def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/bench api")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="bin/api worker processes")
    args = parser.parse_args()
    os.environ.setdefault("IMAGECP_MASTER_KEY", crypto.generate_master_key())
    report = Report(args.json)
    with fresh_database() as url, tempfile.TemporaryDirectory() as work:
        project, token, vms = await seed(url, THREADS * VMS_PER_THREAD + 1)
        (Path(work) / "vms").write_text("\n".join(vms) + "\n")
        path = f"/project/{project}/location/lab/machine-image/base/version"
        script = Path(work) / "create.lua"
        script.write_text(SCRIPT % {"vms": Path(work) / "vms", "per_thread": VMS_PER_THREAD,
                                    "path": path, "token": token})
        with api_server(url, Path(work) / "api.log", "--workers", str(args.workers)) as served:
            base = served.base
            wrk(f"{base}/openapi.json", 2)  # warm up
            floor = wrk(f"{base}/openapi.json", SECONDS)
            created = wrk(base, SECONDS, script)
        engine = db.create_engine(url, pool_size=1)
        async with engine.connect() as connection:
            versions = (await connection.execute(text(
                "SELECT count(*) FROM machine_image_version"))).scalar_one()
        await engine.dispose()
    note = f"{CLIENTS} connections, {args.workers} worker(s), {SECONDS} s"
    report.add("api.create_version_p50", created["p50"], "ms", note)
    report.add("api.create_version_p99", created["p99"], "ms", "target <= 50")
    report.add("api.errors", created["errors"], "count", f"target 0; {versions} created")
    report.add("api.create_version_rps", created["rps"], "req/s")
    report.add("api.floor_p50", floor["p50"], "ms", "GET /openapi.json, same run")
    report.add("api.floor_p99", floor["p99"], "ms", json.dumps({"rps": floor["rps"]}))


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


if __name__ == "__main__":
    ensure_wrk()
    asyncio.run(main())
