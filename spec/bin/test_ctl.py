"""bin/ctl as operators run it: a process, DATABASE_URL, one line per refusal."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib.ssh import keys
from spec.support import strands
from spec.support.processes import ROOT, measured_env


async def ctl(database_url: str, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, str(ROOT / "bin" / "ctl"), *args],
        env={**measured_env(), "DATABASE_URL": database_url, **(env or {})},
        capture_output=True, text=True, timeout=60)


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_master_key_prints_32_random_bytes(database_url: str) -> None:
    first, second = await ctl(database_url, "master-key"), await ctl(database_url, "master-key")
    assert len(base64.b64decode(first.stdout.strip())) == 32
    assert first.stdout != second.stdout


async def test_locations_are_created_once(database_url: str, engine: AsyncEngine) -> None:
    created = await ctl(database_url, "location", "create", "fsn1", "--json")
    assert json.loads(created.stdout)["name"] == "fsn1"
    assert refusal(await ctl(database_url, "location", "create", "fsn1")) == (
        "ctl: a location named 'fsn1' exists already")
    assert refusal(await ctl(database_url, "location", "create", "Bad Name")).startswith(
        "ctl: invalid location name")
    assert await strands.scalar(engine, "SELECT count(*) FROM location") == 1


async def test_host_add_prints_the_key_to_authorize_and_lists_the_host(
        database_url: str, engine: AsyncEngine) -> None:
    await ctl(database_url, "location", "create", "lab")
    added = await ctl(database_url, "host", "add", "--location", "lab", "--address",
                      "10.9.8.7", "--accept-new", "--json")
    assert added.returncode == 0, added.stderr
    shown = json.loads(added.stdout)
    assert keys.normalize_host_key(shown["authorize"]).startswith("ssh-ed25519 ")
    listed = await ctl(database_url, "host", "list")
    assert f"{shown['id']}  lab  10.9.8.7:22  bootstrapping" in listed.stdout
    stored = await strands.scalar(engine, "SELECT encode(client_key_sealed, 'escape')"
                                  " FROM sshable")
    assert "PRIVATE KEY" not in stored
    assert await strands.scalar(engine, "SELECT prog FROM strand") == "Host.Bootstrap"


@pytest.mark.parametrize(("args", "message"), [
    (["--location", "nowhere", "--address", "h", "--accept-new"], "ctl: no location named"),
    (["--location", "lab", "--address", "h"], "ctl: give the host's public key"),
    (["--location", "lab", "--address", "h", "--host-key", "nope"],
     "ctl: --host-key: not an OpenSSH public key"),
])
async def test_host_add_refuses_bad_input_and_writes_nothing(
        database_url: str, engine: AsyncEngine, args: list[str], message: str) -> None:
    await ctl(database_url, "location", "create", "lab")
    assert refusal(await ctl(database_url, "host", "add", *args)).startswith(message)
    assert await strands.scalar(engine, "SELECT count(*) FROM vm_host") == 0


async def test_host_add_without_a_master_key_says_so(database_url: str,
                                                     engine: AsyncEngine) -> None:
    await ctl(database_url, "location", "create", "lab")
    result = await ctl(database_url, "host", "add", "--location", "lab", "--address", "h",
                       "--accept-new", env={"IMAGECP_MASTER_KEY": ""})
    assert refusal(result).startswith("ctl: IMAGECP_MASTER_KEY is not set")
    assert await strands.scalar(engine, "SELECT count(*) FROM vm_host") == 0
