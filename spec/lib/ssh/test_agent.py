"""The host agent deployed and driven over real SSH: versions, units, secrets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lib import ssh
from lib.ssh import agent
from spec.support.sshd import TestHost, home_of_host_user, sessions_of


async def until_state(host: TestHost, name: str, wanted: str, limit: float = 20) -> None:
    """Poll the unit's state over SSH; the limit only bounds a hang."""
    for _ in range(int(limit * 10)):
        if await agent.unit(host.target, "check", name) == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"unit {name} never reached {wanted}")


@pytest.fixture
async def deployed(ssh_host: TestHost) -> TestHost:
    await agent.deploy(ssh_host.target)
    return ssh_host


def unit_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def go() -> Iterator[Path]:
    """A file a unit waits for, in a directory the host account can read (not pytest's)."""
    directory = Path(f"/tmp/imagecp-gate-{uuid.uuid4().hex[:8]}")
    directory.mkdir(mode=0o755)
    yield directory / "go"
    shutil.rmtree(directory, ignore_errors=True)


def cmdlines_containing(needle: bytes) -> list[Path]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                found.append(cmdline)
        except OSError:
            continue
    return found


async def test_deploy_installs_this_version_and_is_idempotent(ssh_host: TestHost) -> None:
    await agent.check_prerequisites(ssh_host.target)
    assert await agent.deploy(ssh_host.target) == agent.version()
    assert await agent.installed_version(ssh_host.target) == agent.version()
    assert await agent.deploy(ssh_host.target) == agent.version()
    assert await agent.unit(ssh_host.target, "check", unit_name()) == "NotStarted"


def test_the_version_changes_with_the_agent_code() -> None:
    assert len(agent.version()) == 16 and set(agent.files()) >= {"agent.py", "unit.py"}


async def test_a_unit_outlives_its_connection_and_a_new_one_reads_its_state(
        deployed: TestHost, go: Path) -> None:
    name = unit_name()
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; echo finished"
    await agent.run_unit(deployed.target, name, ["sh", "-c", script])
    for pid in sessions_of(deployed):
        os.kill(pid, signal.SIGKILL)  # every SSH connection to the host dies
    await until_state(deployed, name, "InProgress")
    go.touch()
    await until_state(deployed, name, "Succeeded")
    assert "finished" in await agent.unit(deployed.target, "logs", name)


async def test_killing_a_units_process_makes_it_failed(deployed: TestHost) -> None:
    name = unit_name()
    await agent.run_unit(deployed.target, name, ["sleep", "60"])
    pid = int((home_of_host_user() / ".imagecp" / "units" / name / "pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    await until_state(deployed, name, "Failed")


async def test_stop_fails_the_unit_and_clean_removes_it_but_not_while_running(
        deployed: TestHost) -> None:
    name = unit_name()
    await agent.run_unit(deployed.target, name, ["sleep", "60"])
    with pytest.raises(ssh.SshCommandFailed) as refusal:
        await agent.unit(deployed.target, "clean", name)
    assert refusal.value.exit_status == 3
    assert await agent.unit(deployed.target, "check", name) == "InProgress"
    await agent.unit(deployed.target, "stop", name)
    assert await agent.unit(deployed.target, "check", name) == "Failed"
    await agent.unit(deployed.target, "clean", name)
    assert await agent.unit(deployed.target, "check", name) == "NotStarted"


async def test_run_on_a_unit_in_progress_is_refused(deployed: TestHost) -> None:
    name = unit_name()
    await agent.run_unit(deployed.target, name, ["sleep", "60"])
    with pytest.raises(ssh.SshCommandFailed) as refusal:
        await agent.run_unit(deployed.target, name, ["true"])
    assert refusal.value.exit_status == 3
    await agent.unit(deployed.target, "stop", name)


def files_containing(needle: bytes, *roots: Path) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                if path.is_file() and needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


async def test_a_secret_on_stdin_is_never_in_ps_logs_or_on_disk(
        deployed: TestHost, go: Path, logs: list[Any]) -> None:
    secret = os.urandom(16).hex().encode()
    name = unit_name()
    script = f"sha256sum; while [ ! -e {go} ]; do sleep 0.05; done"
    await agent.run_unit(deployed.target, name, ["sh", "-c", script], stdin=secret)
    await until_state(deployed, name, "InProgress")
    assert cmdlines_containing(secret) == []
    go.touch()
    await until_state(deployed, name, "Succeeded")
    assert hashlib.sha256(secret).hexdigest() in await agent.unit(deployed.target, "logs", name)
    assert secret.decode() not in repr(logs)
    assert files_containing(secret, home_of_host_user(), Path("/tmp"), Path("/dev/shm")) == []
