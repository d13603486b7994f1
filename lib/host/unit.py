"""Detached units: long work on a host that outlives the SSH session which started it.

Standard library only (Python >= 3.9), on Linux (it reads /proc). One directory per unit under
the root (directories 0700, files 0600):

    <root>/<UNIT>/pid     the supervisor's pid: it leads the unit's session and process group
    <root>/<UNIT>/boot    the kernel boot id the supervisor ran under (pids are reused after reboot)
    <root>/<UNIT>/log     the command's stdout and stderr, appended (and the supervisor's errors)
    <root>/<UNIT>/exit    written last, atomically: `0`, the exit status, `signal N` or `stopped`
    <root>/.<UNIT>.lock   serialises run, clean and stop of one unit (kept; names never start `.`)

States: NotStarted (no directory, or no pid file); InProgress (pid, no exit, and a live process
in the group, in this boot); Succeeded (exit says 0); Failed (exit says anything else, or pid
without exit and the group gone: killed with SIGKILL, or lost in a reboot).

`run` reads the secret on its stdin, starts the supervisor (this file run as a script) in a new
session with the secret on a pipe, and returns once the supervisor has written its pid file. The
supervisor runs the command in its process group, feeds it the secret through a pipe, waits for
it and writes the exit file. The secret never touches the disk, an argv or a log.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

NOT_STARTED, IN_PROGRESS, SUCCEEDED, FAILED = "NotStarted", "InProgress", "Succeeded", "Failed"
OK, FAILURE, USAGE, REFUSED = 0, 1, 2, 3
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SUPERVISOR = os.path.abspath(__file__)
KILL_WAIT = 5.0  # seconds to wait for the group to vanish after SIGKILL
POLL = 0.05


def unit_name(text: str) -> str:
    """argparse type of a unit name: one safe path component."""
    if not NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid unit name {text!r}")
    return text


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _boot_id() -> str:
    return _read(Path("/proc/sys/kernel/random/boot_id")) or ""


def _group_alive(pgid: int) -> bool:
    """True while a process other than a zombie (dead, awaiting its reaper) is in the group.

    Reads /proc (the hosts run Linux): os.killpg(pgid, 0) would count zombies as alive.
    """
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_bytes() if entry.isdigit() else b""
        except OSError:  # exited meanwhile
            continue
        fields = stat.rpartition(b")")[2].split()  # state, ppid, pgrp, ...; comm may hold ")"
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _exit_state(directory: Path) -> str | None:
    status = _read(directory / "exit")
    return None if status is None else SUCCEEDED if status.strip() == "0" else FAILED


def state(directory: Path) -> str:
    pid = _read(directory / "pid")
    if pid is None:
        return NOT_STARTED
    finished = _exit_state(directory)
    if finished:
        return finished
    if _read(directory / "boot") == _boot_id() and _group_alive(int(pid)):
        return IN_PROGRESS
    return _exit_state(directory) or FAILED  # the supervisor may have finished meanwhile


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    fd = os.open(root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _refuse(name: str, what: str) -> int:
    print(f"unit {name} is {IN_PROGRESS}: refusing to {what}", file=sys.stderr)
    return REFUSED


def _start_supervisor(directory: Path, cwd: str | None, argv: list[str], secret: bytes) -> bool:
    """Start the supervisor in a new session; True once it has written its pid file."""
    ready_read, ready_write = os.pipe()
    log = os.open(directory / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        supervisor = subprocess.Popen(
            [sys.executable, SUPERVISOR, str(directory), str(ready_write), "--", *argv],
            stdin=subprocess.PIPE, stdout=log, stderr=log, cwd=cwd, pass_fds=(ready_write,),
            start_new_session=True)
    finally:
        os.close(log)
        os.close(ready_write)
    assert supervisor.stdin is not None
    with contextlib.suppress(BrokenPipeError), supervisor.stdin as pipe:  # died: see below
        pipe.write(secret)
    with os.fdopen(ready_read, "rb") as ready:
        return ready.read() == b"ready"  # EOF without it: the supervisor died first


def run(root: Path, name: str, cwd: str | None, argv: list[str]) -> int:
    if cwd is not None and not os.path.isdir(cwd):
        print(f"--cwd {cwd}: not a directory", file=sys.stderr)
        return USAGE
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = root / name
    with _locked(root, name):
        if state(directory) == IN_PROGRESS:
            return _refuse(name, "run it again")
        shutil.rmtree(directory, ignore_errors=True)  # cleans a Succeeded or Failed unit
        directory.mkdir(mode=0o700)
        secret = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
        if not _start_supervisor(directory, cwd, argv, secret):
            print(f"unit {name}: the supervisor did not start; see its log", file=sys.stderr)
            return FAILURE
    return OK


def check(root: Path, name: str) -> int:
    sys.stdout.write(state(root / name))
    return OK


def clean(root: Path, name: str) -> int:
    if not (root / name).exists():
        return OK
    with _locked(root, name):
        if state(root / name) == IN_PROGRESS:
            return _refuse(name, "clean it")
        shutil.rmtree(root / name, ignore_errors=True)
    return OK


def _wait_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def stop(root: Path, name: str, grace: float) -> int:
    directory = root / name
    if not directory.exists():
        return OK
    with _locked(root, name):
        if state(directory) != IN_PROGRESS:
            return OK
        pgid = int(_read(directory / "pid") or "0")
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signum)
            if _wait_gone(pgid, wait):
                break
        _write_atomic(directory / "exit", "stopped\n")
    return OK


def logs(root: Path, name: str) -> int:
    with contextlib.suppress(FileNotFoundError), open(root / name / "log", "rb") as log:
        shutil.copyfileobj(log, sys.stdout.buffer)
    return OK


def _feed(pipe: IO[bytes], secret: bytes) -> None:
    with contextlib.suppress(BrokenPipeError), pipe:  # the command exited without reading it
        pipe.write(secret)


def _run_command(argv: list[str], secret: bytes) -> str:
    """Run argv with the secret on its stdin; its exit status as the exit file says it."""
    try:
        command = subprocess.Popen(argv, stdin=subprocess.PIPE)  # stdout, stderr: the log
    except OSError as error:
        print(f"unit: cannot run {argv[0]!r}: {error}", file=sys.stderr, flush=True)
        return "127" if isinstance(error, FileNotFoundError) else "126"
    assert command.stdin is not None
    threading.Thread(target=_feed, args=(command.stdin, secret), daemon=True).start()
    status = command.wait()
    return f"signal {-status}" if status < 0 else str(status)


def supervise(directory: Path, ready: int, argv: list[str]) -> None:
    """The supervisor: leads the unit's session; stdin is the secret, stdout and stderr the log."""
    secret = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _write_atomic(directory / "boot", _boot_id())
    _write_atomic(directory / "pid", f"{os.getpid()}\n")
    os.write(ready, b"ready")
    os.close(ready)
    _write_atomic(directory / "exit", _run_command(argv, secret) + "\n")


def _handler(args: argparse.Namespace, argv: list[str] | None) -> int:
    if (args.command == "run") != bool(argv):
        print("`run`, and only `run`, takes a command after `--`", file=sys.stderr)
        return USAGE
    root, name = Path(args.root), args.unit
    if args.command == "run":
        return run(root, name, args.cwd, argv or [])
    if args.command == "stop":
        return stop(root, name, args.grace)
    simple: dict[str, Callable[[Path, str], int]] = {"check": check, "clean": clean, "logs": logs}
    return simple[args.command](root, name)


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the `unit` group: `unit COMMAND UNIT [options]`."""
    group = groups.add_parser("unit", help="detached units of work")
    group.set_defaults(handler=_handler)
    commands = group.add_subparsers(dest="command", required=True)
    for command in ("run", "check", "clean", "stop", "logs"):
        parser = commands.add_parser(command)
        parser.add_argument("unit", type=unit_name)
        if command == "run":
            parser.add_argument("--cwd", help="working directory of the command")
        if command == "stop":
            parser.add_argument("--grace", type=float, default=10.0, help="seconds to SIGKILL")


if __name__ == "__main__":  # the supervisor: unit.py DIRECTORY READY_FD -- ARGV...
    supervise(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4:])
