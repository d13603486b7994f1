"""Connections to hosts, cached for one strand run, and running commands on them.

Respirate opens a `run_scope()` around every strand run: the first command to a host opens
one connection, later commands reuse it, and the scope closes them all. A connection-level
error evicts the connection, so the next command reconnects. Host keys are checked against
the pinned ones on every connection; with none pinned and `accept_new`, the key seen first is
reported (`seen_host_key`) for the caller to pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncssh

from lib import ubid
from lib.log import get_logger
from lib.ssh.command import (
    ClientKeyRefused,
    HostKeyMismatch,
    SshCommandFailed,
    SshTimeout,
    SshUnreachable,
    render,
)

log = get_logger(__name__)

MAX_TIMEOUT = 81.0  # well inside the watchdog's 91 s, whatever the caller asks
CONNECT_TIMEOUT = 10.0
# sshd's MaxSessions defaults to 10, and it frees a finished session's slot only in a later
# pass of its main loop: stay well below, and retry an open it refuses anyway.
SESSIONS_PER_CONNECTION = 6
OPEN_RETRIES = 5
OUTPUT_LOGGED = 2000

# When the watchdog would end this strand run (monotonic); commands finish before it.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("ssh_deadline",
                                                                       default=None)


@dataclass(frozen=True)
class Target:
    """Where a command goes. `client_key` is the private key, opened from its sealed column."""

    id: uuid.UUID
    address: str
    port: int
    user: str
    host_keys: tuple[str, ...]
    accept_new: bool
    client_key: bytes = field(repr=False)
    python: str = "python3"  # runs the agent; has zstandard, cryptography and obstore

    @property
    def name(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"


@dataclass
class _Open:
    connection: asyncssh.SSHClientConnection
    slots: asyncio.Semaphore


class Sessions:
    """The connections of one strand run."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int, str], _Open] = {}
        self._lock = asyncio.Lock()
        self.seen_host_keys: dict[uuid.UUID, str] = {}

    async def _get(self, target: Target) -> _Open:
        key = (target.address, target.port, target.user)
        async with self._lock:
            cached = self._open.get(key)
            if cached is not None and not cached.connection.is_closed():
                return cached
            self._open.pop(key, None)
            connection = await _connect(target)
            server_key = connection.get_server_host_key()
            if server_key is not None:
                self.seen_host_keys[target.id] = server_key.export_public_key().decode().strip()
            opened = _Open(connection, asyncio.Semaphore(SESSIONS_PER_CONNECTION))
            self._open[key] = opened
            return opened

    def evict(self, target: Target) -> None:
        opened = self._open.pop((target.address, target.port, target.user), None)
        if opened is not None:
            opened.connection.abort()

    async def close(self) -> list[BaseException]:
        """Close every connection; returns the errors closing raised (all are evicted)."""
        errors: list[BaseException] = []
        opened, self._open = list(self._open.values()), {}
        for item in opened:
            try:
                item.connection.close()
                await item.connection.wait_closed()
            except Exception as error:
                errors.append(error)
        return errors

    def __len__(self) -> int:
        return len(self._open)


_current: contextvars.ContextVar[Sessions | None] = contextvars.ContextVar("ssh_sessions",
                                                                          default=None)


@asynccontextmanager
async def run_scope(until: float | None = None) -> AsyncIterator[Sessions]:
    """Cache connections for the code inside (one strand run); close them at the end."""
    sessions = Sessions()
    token = _current.set(sessions)
    deadline_token = deadline.set(until)
    try:
        yield sessions
    finally:
        _current.reset(token)
        deadline.reset(deadline_token)
        await sessions.close()


def current() -> Sessions | None:
    return _current.get()


async def _connect(target: Target) -> asyncssh.SSHClientConnection:
    if target.host_keys:
        known_hosts: object = ([asyncssh.import_public_key(k) for k in target.host_keys], [], [])
    elif target.accept_new:
        known_hosts = None  # trust on first use: the caller pins what we saw
    else:
        raise HostKeyMismatch(f"no host key is pinned for {target.name} and new keys are not"
                              " accepted")
    try:
        return await asyncssh.connect(
            target.address, target.port, username=target.user,
            client_keys=[asyncssh.import_private_key(target.client_key)],
            known_hosts=known_hosts, config=[], agent_path=None, preferred_auth="publickey",
            connect_timeout=CONNECT_TIMEOUT, keepalive_interval=3, keepalive_count_max=5)
    except asyncssh.HostKeyNotVerifiable as error:
        raise HostKeyMismatch(f"{target.name} presented a host key that is not pinned for it"
                              f" (changed or spoofed host): {error}") from None
    except asyncssh.PermissionDenied as error:
        raise ClientKeyRefused(f"{target.name} refused our client key: {error}") from None
    except (OSError, TimeoutError, asyncssh.Error) as error:
        raise SshUnreachable(f"cannot connect to {target.name}: {error}") from None


async def _open(connection: asyncssh.SSHClientConnection, command: str,
                stdin: str | bytes | None) -> asyncssh.SSHClientProcess[bytes]:
    """A process in binary mode: stdin goes byte for byte (secrets are bytes)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    for attempt in range(OPEN_RETRIES):
        try:
            if not data:  # asyncssh sends no EOF for empty input: the command would wait on it
                return await connection.create_process(command, stdin=asyncssh.DEVNULL,
                                                       encoding=None)
            return await connection.create_process(command, input=data, encoding=None)
        except asyncssh.ChannelOpenError:
            if attempt == OPEN_RETRIES - 1:
                raise
            await asyncio.sleep(0.02 * (attempt + 1))
    raise AssertionError("unreachable")


def _timeout(requested: float | None) -> float:
    until = deadline.get()
    limit = MAX_TIMEOUT if until is None else max(1.0, until - time.monotonic() - 2)
    return min(requested if requested is not None else MAX_TIMEOUT, limit, MAX_TIMEOUT)


async def cmd(target: Target, template: str, *, stdin: str | bytes | None = None,
              limit: float | None = None, **arguments: object) -> str:
    """Run a command rendered from `template` on the host; return its stdout.

    Raises SshCommandFailed (non-zero exit or a signal), SshTimeout, SshUnreachable (and its
    HostKeyMismatch). `stdin` is for secrets: it is never logged or put on the command line.
    """
    command = render(template, **arguments)
    sessions = current()
    scoped = sessions is not None
    if sessions is None:  # outside a strand run: a connection for this command alone
        sessions = Sessions()
    started = time.monotonic()
    seconds = _timeout(limit)
    try:
        opened = await sessions._get(target)
        async with opened.slots:  # held until the channel is closed: sshd counts it till then
            process = await _open(opened.connection, command, stdin)
            try:
                result = await process.wait(check=False, timeout=seconds)
            except asyncssh.TimeoutError:
                with contextlib.suppress(asyncssh.Error, OSError):
                    process.send_signal("KILL")  # abandoned: do not leave it running
                raise
            finally:
                process.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait_closed(), 2)
    except asyncssh.TimeoutError as error:
        stdout, stderr = _text(error.stdout), _text(error.stderr)
        _log(target, command, started, None, None, stdout, stderr)
        raise SshTimeout(f"command timed out after {seconds:g} s on {target.name}: {command}",
                         command=command, stdout=stdout, stderr=stderr) from None
    except (OSError, asyncssh.Error) as error:
        sessions.evict(target)
        raise SshUnreachable(f"lost {target.name} while running {command}: {error}",
                             command=command) from None
    finally:
        if not scoped:
            await sessions.close()
    stdout, stderr = _text(result.stdout), _text(result.stderr)
    _log(target, command, started, result.exit_status, result.exit_signal, stdout, stderr)
    if result.exit_status != 0:
        signal = result.exit_signal[0] if result.exit_signal else None
        what = f"signal {signal}" if signal else f"exit {result.exit_status}"
        raise SshCommandFailed(f"command failed ({what}) on {target.name}: {command}",
                               command=command, exit_status=result.exit_status,
                               exit_signal=signal, stdout=stdout, stderr=stderr)
    return stdout


def _text(output: object) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return "" if output is None else str(output)


def _log(target: Target, command: str, started: float, status: int | None,
         signal: object, stdout: str, stderr: str) -> None:
    log.info("ssh command", host=ubid.to_ubid(target.id), target=target.name, command=command,
             exit_status=status, exit_signal=signal[0] if isinstance(signal, tuple) else signal,
             duration=round(time.monotonic() - started, 3), stdout=stdout[-OUTPUT_LOGGED:],
             stderr=stderr[-OUTPUT_LOGGED:])
