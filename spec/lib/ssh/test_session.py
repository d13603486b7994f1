"""Commands over SSH against real sshd processes (reference §7 "Sshable", adapted)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from lib import ssh
from lib.ssh import session
from spec.support.sshd import TestHost, client_key, sessions_of


async def test_a_command_returns_its_stdout(ssh_host: TestHost) -> None:
    assert await ssh.cmd(ssh_host.target, "echo :word", word="hello") == "hello\n"


async def test_arguments_arrive_verbatim(ssh_host: TestHost) -> None:
    words = ["two words", "it's", '"quoted"', "$(touch /tmp/pwned)", "`id`", "new\nline",
             "semi;colon", "*", ""]
    out = await ssh.cmd(ssh_host.target, "printf %s\\\\0 :shelljoin_words", words=words)
    assert out.split("\0")[:-1] == words
    assert not Path("/tmp/pwned").exists()


async def test_a_failing_command_raises_with_status_and_output(ssh_host: TestHost) -> None:
    with pytest.raises(ssh.SshCommandFailed) as failure:
        await ssh.cmd(ssh_host.target, "sh -c :script",
                      script="echo out; echo err >&2; exit 3")
    error = failure.value
    assert (error.exit_status, error.exit_signal) == (3, None)
    assert (error.stdout, error.stderr) == ("out\n", "err\n")
    assert "exit 3" in str(error)


async def test_a_command_killed_by_a_signal_is_a_failure_naming_it_not_a_timeout(
        ssh_host: TestHost) -> None:
    with pytest.raises(ssh.SshCommandFailed) as failure:
        await ssh.cmd(ssh_host.target, "kill -KILL $$")  # the session's own process
    assert failure.value.exit_signal == "KILL" and not isinstance(failure.value, ssh.SshTimeout)


async def test_a_command_past_its_time_limit_times_out(ssh_host: TestHost) -> None:
    with pytest.raises(ssh.SshTimeout, match=r"timed out after 0\.5 s"):
        await ssh.cmd(ssh_host.target, "sleep :seconds", seconds=10, limit=0.5)


def test_timeouts_follow_the_watchdog_deadline_with_a_cap() -> None:
    assert session._timeout(None) == session.MAX_TIMEOUT
    assert session._timeout(500) == session.MAX_TIMEOUT
    token = session.deadline.set(time.monotonic() + 10)
    try:
        assert 7.5 < session._timeout(None) <= 8  # two seconds before the deadline
        assert session._timeout(3) == 3
    finally:
        session.deadline.reset(token)
    token = session.deadline.set(time.monotonic() - 5)
    try:
        assert session._timeout(None) == 1  # past the deadline: still a second to fail in
    finally:
        session.deadline.reset(token)


async def test_stdin_reaches_the_command_and_is_never_logged(ssh_host: TestHost,
                                                             logs: list[Any]) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    out = await ssh.cmd(ssh_host.target, "sha256sum", stdin=secret)
    import hashlib

    assert out.split()[0] == hashlib.sha256(secret.encode()).hexdigest()
    events = [e for e in logs if e["event"] == "ssh command"]
    assert len(events) == 1 and events[0]["command"] == "sha256sum"
    assert secret not in repr(logs)


async def test_connections_are_reused_within_a_run_and_closed_after_it(
        ssh_host: TestHost) -> None:
    async with ssh.run_scope() as sessions:
        await ssh.cmd(ssh_host.target, "true")
        await ssh.cmd(ssh_host.target, "true")
        assert len(sessions) == 1
        assert len(sessions_of(ssh_host)) == 1
    assert len(sessions) == 0
    await asyncio.sleep(0.3)
    assert sessions_of(ssh_host) == []
    assert ssh.current() is None


async def test_fifty_concurrent_commands_share_one_connection_within_max_sessions(
        ssh_host: TestHost) -> None:
    async with ssh.run_scope() as sessions:
        outputs = await asyncio.gather(*(ssh.cmd(ssh_host.target, "echo :n", n=n)
                                         for n in range(50)))
        assert [int(out) for out in outputs] == list(range(50))
        assert len(sessions) == 1
    assert ssh_host.log().count("Accepted publickey") == 1


async def test_a_connection_error_evicts_it_and_the_next_command_reconnects(
        ssh_host: TestHost) -> None:
    async with ssh.run_scope() as sessions:
        await ssh.cmd(ssh_host.target, "true")
        for pid in sessions_of(ssh_host):
            os.kill(pid, signal.SIGKILL)  # the server side of our connection dies
        with pytest.raises(ssh.SshUnreachable):
            await ssh.cmd(ssh_host.target, "true")
        assert len(sessions) == 0
        assert await ssh.cmd(ssh_host.target, "echo :w", w="again") == "again\n"
        assert len(sessions) == 1


async def test_a_host_whose_key_changed_is_refused_and_runs_nothing(
        ssh_host: TestHost, tmp_path: Any) -> None:
    pinned = ssh_host.target
    ssh_host.stop()
    ssh_host.new_host_key()
    ssh_host.start()
    marker = tmp_path / "ran"
    with pytest.raises(ssh.HostKeyMismatch, match="not pinned"):
        await ssh.cmd(pinned, "touch :path", path=str(marker))
    assert not marker.exists()
    assert "Accepted publickey" not in ssh_host.log().split("Server listening")[-1]


async def test_without_a_pinned_key_nothing_connects_unless_new_keys_are_accepted(
        ssh_host: TestHost) -> None:
    with pytest.raises(ssh.HostKeyMismatch, match="no host key is pinned"):
        await ssh.cmd(ssh_host.with_pins(), "true")
    async with ssh.run_scope() as sessions:
        target = ssh_host.with_pins(accept_new=True)
        await ssh.cmd(target, "true")
        assert sessions.seen_host_keys[target.id].split()[:2] == ssh_host.host_key.split()[:2]


async def test_a_refused_client_key_is_unreachable_with_a_clear_reason(
        ssh_host: TestHost) -> None:
    from dataclasses import replace

    stranger = replace(ssh_host.target, client_key=client_key()[0])
    with pytest.raises(ssh.SshUnreachable, match="refused our client key"):
        await ssh.cmd(stranger, "true")


async def test_an_unreachable_host_is_reported_as_such(ssh_host: TestHost) -> None:
    ssh_host.stop()
    with pytest.raises(ssh.SshUnreachable, match="cannot connect"):
        await ssh.cmd(ssh_host.target, "true")


async def test_several_hosts_each_get_their_own_connection(ssh_hosts: Any) -> None:
    first, second = ssh_hosts(2)
    async with ssh.run_scope() as sessions:
        outputs = await asyncio.gather(ssh.cmd(first.target, "hostname"),
                                       ssh.cmd(second.target, "echo :a", a=second.address))
        assert outputs[1] == f"{second.address}\n" and len(sessions) == 2


async def test_a_command_reading_stdin_sees_its_end_when_none_is_given(
        ssh_host: TestHost) -> None:
    assert await ssh.cmd(ssh_host.target, "wc -c", limit=10) == "0\n"
    assert await ssh.cmd(ssh_host.target, "wc -c", stdin="", limit=10) == "0\n"
