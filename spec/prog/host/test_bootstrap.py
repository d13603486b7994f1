"""Host.Bootstrap against real sshd: pinning, installing the agent, failing clearly, retrying."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import crypto
from lib.scheduling.flow import Nap
from lib.scheduling.runner import StrandRunner
from lib.ssh import agent, keys
from model import vm_host
from model.sshable import client_key_where
from spec.support import strands
from spec.support.sshd import TestHost


async def add_host(engine: AsyncEngine, host: TestHost, **options: Any) -> Any:
    await strands.execute(engine, "INSERT INTO location (id, name) VALUES"
                          " (gen_random_uuid(), 'lab') ON CONFLICT DO NOTHING")
    options.setdefault("host_key", host.host_key)
    options.setdefault("python", host.target.python)
    async with engine.begin() as connection:
        host_id, public = await vm_host.assemble(
            connection, location="lab", address=host.address, port=host.port,
            master_key=crypto.master_key(), **options)
    host.authorize(host.client_public, public)
    return host_id


async def state_of(engine: AsyncEngine, host_id: Any) -> Any:
    async with engine.connect() as connection:
        from sqlalchemy import text

        return (await connection.execute(text(
            "SELECT h.state, h.state_reason, h.agent_version, s.host_keys, s.accept_new"
            " FROM vm_host h JOIN sshable s USING (id) WHERE h.id = :id"), {"id": host_id})).one()


async def test_bootstrap_installs_the_agent_and_marks_the_host_ready(
        engine: AsyncEngine, runner: StrandRunner, ssh_host: TestHost) -> None:
    host_id = await add_host(engine, ssh_host)
    outcome = await runner.run(host_id)
    assert isinstance(outcome, Nap)
    row = await state_of(engine, host_id)
    assert (row.state, row.state_reason, row.agent_version) == ("ready", None, agent.version())
    assert await agent.installed_version(ssh_host.target) == agent.version()
    assert (await strands.row(engine, host_id)).label == "wait"


async def test_bootstrap_again_is_a_no_op_on_the_host(engine: AsyncEngine, runner: StrandRunner,
                                                     ssh_host: TestHost,
                                                     logs: list[Any]) -> None:
    host_id = await add_host(engine, ssh_host)
    await runner.run(host_id)
    logs.clear()
    await strands.execute(engine, "UPDATE strand SET label = 'start', schedule = now()"
                          " WHERE id = :id", id=host_id)
    await runner.run(host_id)
    commands = [e["command"] for e in logs if e["event"] == "ssh command"]
    assert not any(c.startswith("cat >") for c in commands)  # nothing deployed again
    assert (await state_of(engine, host_id)).state == "ready"


async def test_a_newer_agent_is_deployed_before_the_host_is_used(
        engine: AsyncEngine, runner: StrandRunner, ssh_host: TestHost) -> None:
    host_id = await add_host(engine, ssh_host)
    await runner.run(host_id)
    await strands.execute(engine, "UPDATE vm_host SET agent_version = 'older' WHERE id = :id",
                          id=host_id)
    await strands.execute(engine, "UPDATE strand SET schedule = now() WHERE id = :id",
                          id=host_id)
    await runner.run(host_id)
    assert (await state_of(engine, host_id)).agent_version == agent.version()


async def test_accept_new_pins_the_first_key_seen(engine: AsyncEngine, runner: StrandRunner,
                                                  ssh_host: TestHost) -> None:
    host_id = await add_host(engine, ssh_host, host_key=None, accept_new=True)
    await runner.run(host_id)
    row = await state_of(engine, host_id)
    assert row.state == "ready" and row.accept_new is False
    assert row.host_keys == [keys.normalize_host_key(ssh_host.host_key)]


async def test_an_unreachable_host_is_marked_so_and_retried(
        engine: AsyncEngine, runner: StrandRunner, ssh_host: TestHost) -> None:
    host_id = await add_host(engine, ssh_host)
    ssh_host.stop()
    outcome = await runner.run(host_id)
    assert isinstance(outcome, Nap) and outcome.seconds == 60
    row = await state_of(engine, host_id)
    assert row.state == "unreachable" and "cannot connect" in row.state_reason
    ssh_host.start()
    await strands.execute(engine, "UPDATE strand SET schedule = now() WHERE id = :id",
                          id=host_id)
    await runner.run(host_id)
    assert (await state_of(engine, host_id)).state == "ready"


async def test_a_host_with_another_key_is_refused_with_the_reason(
        engine: AsyncEngine, runner: StrandRunner, ssh_host: TestHost) -> None:
    wrong = keys.new_client_key()[1]  # a valid key, but not this host's
    host_id = await add_host(engine, ssh_host, host_key=wrong)
    outcome = await runner.run(host_id)
    assert isinstance(outcome, Nap) and outcome.seconds == 600
    row = await state_of(engine, host_id)
    assert row.state == "refused" and "not pinned" in row.state_reason
    assert row.agent_version is None


async def test_a_host_that_refuses_our_client_key_is_refused_with_the_reason(
        engine: AsyncEngine, runner: StrandRunner, ssh_host: TestHost) -> None:
    host_id = await add_host(engine, ssh_host)
    ssh_host.authorize(keys.new_client_key()[1])  # someone else's key instead of ours
    await runner.run(host_id)
    row = await state_of(engine, host_id)
    assert row.state == "refused" and "refused our client key" in row.state_reason


@pytest.mark.parametrize(("options", "message"), [
    ({"location": "nowhere"}, "no location named 'nowhere'"),
    ({"host_key": None}, "give the host's public key"),
    ({"accept_new": True}, "not both"),
    ({"host_key": "ssh-ed25519 garbage"}, "--host-key: not an OpenSSH public key"),
    ({"port": 70000}, "port must be between 1 and 65535"),
    ({"user": "Root Admin"}, "invalid unix user"),
    ({"address": "a b"}, "invalid address"),
])
async def test_a_bad_host_is_refused_and_nothing_is_written(
        engine: AsyncEngine, options: dict[str, Any], message: str) -> None:
    await strands.execute(engine, "INSERT INTO location (id, name) VALUES"
                          " (gen_random_uuid(), 'lab')")
    arguments: dict[str, Any] = {"location": "lab", "address": "127.0.0.9", "port": 22,
                                 "host_key": keys.new_client_key()[1]}
    arguments.update(options)
    async with engine.begin() as connection:
        with pytest.raises(vm_host.HostRefused, match=message):
            await vm_host.assemble(connection, master_key=crypto.master_key(), **arguments)
    for table in ("vm_host", "sshable", "strand"):
        assert await strands.scalar(engine, f"SELECT count(*) FROM {table}") == 0


async def test_a_second_host_at_the_same_address_is_refused(engine: AsyncEngine,
                                                           ssh_host: TestHost) -> None:
    await add_host(engine, ssh_host)
    with pytest.raises(vm_host.HostRefused, match="exists already"):
        await add_host(engine, ssh_host)
    assert await strands.scalar(engine, "SELECT count(*) FROM vm_host") == 1


async def test_the_client_key_is_stored_sealed(engine: AsyncEngine, ssh_host: TestHost) -> None:
    host_id = await add_host(engine, ssh_host)
    sealed = await strands.scalar(engine, "SELECT client_key_sealed FROM sshable WHERE id = :id",
                                  id=host_id)
    assert b"PRIVATE KEY" not in sealed and sealed.startswith(b"v1")
    opened = crypto.unseal(crypto.master_key(), sealed, client_key_where(host_id))
    assert b"OPENSSH PRIVATE KEY" in opened
    with pytest.raises(crypto.SecretError, match="does not open"):
        crypto.unseal(crypto.master_key(), sealed, client_key_where("another-row"))
