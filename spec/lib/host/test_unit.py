"""The host agent's detached unit runner (lib/host/unit.py), with real processes.

Every test runs `agent.py` as a subprocess against a root under tmp_path, as the control plane
does over SSH. Units are Python one-liners; the ones that must stay InProgress wait for a `go`
file the test creates, so no test depends on timing. Whatever is still running at teardown is
killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from spec.support.processes import measured_env

AGENT = Path(__file__).resolve().parents[3] / "lib" / "host" / "agent.py"
PY = sys.executable
T = TypeVar("T")

# Prints `started`, waits (at most two minutes) for the file named by argv[1], prints `finished`.
GATED = ("import os, sys, time\n"
         "print('started', flush=True)\n"
         "deadline = time.monotonic() + 120\n"
         "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
         "    time.sleep(0.02)\n"
         "print('finished', flush=True)\n")


def wait_for(probe: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """Poll until probe() is truthy; fail after timeout seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(path.parent.name))
    return members


def one_line(text: bytes) -> bool:
    return text.endswith(b"\n") and text.count(b"\n") == 1


class Agent:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, *words: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [PY, str(AGENT), "--root", str(self.root), "unit", *words],
            input=stdin, capture_output=True, timeout=60, check=False, env=measured_env())

    def run(self, unit: str, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return self("run", unit, "--", *argv, stdin=stdin)

    def start(self, unit: str, *argv: str, stdin: bytes = b"") -> None:
        result = self.run(unit, *argv, stdin=stdin)
        assert result.returncode == 0, result.stderr

    def state(self, unit: str) -> str:
        result = self("check", unit)
        assert result.returncode == 0, result.stderr
        return result.stdout.decode()

    def wait_state(self, unit: str, state: str) -> None:
        wait_for(lambda: self.state(unit) == state, f"{unit} to be {state}")

    def logs(self, unit: str) -> bytes:
        result = self("logs", unit)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def pid(self, unit: str) -> int:
        return int((self.root / unit / "pid").read_text())

    def exit_file(self, unit: str) -> str:
        return (self.root / unit / "exit").read_text()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path / "units")
    yield agent
    for pid_file in agent.root.glob("*/pid"):
        for pid in group_members(int(pid_file.read_text())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def go(tmp_path: Path) -> Path:
    return tmp_path / "go"


def test_run_is_in_progress_until_the_command_ends_then_succeeded_with_its_output_in_logs(
        agent: Agent, go: Path) -> None:
    result = agent.run("u1", PY, "-c", GATED, str(go))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert agent.state("u1") == "InProgress"
    wait_for(lambda: agent.logs("u1") == b"started\n", "the command to start")
    assert agent.state("u1") == "InProgress"
    go.touch()
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == b"started\nfinished\n"
    assert agent.exit_file("u1") == "0\n"


def test_check_right_after_run_never_reads_not_started(agent: Agent) -> None:
    for _ in range(5):
        agent.start("quick", PY, "-c", "pass")
        assert agent.state("quick") in ("InProgress", "Succeeded")
        agent.wait_state("quick", "Succeeded")


def test_failing_command_is_failed_with_its_exit_status_recorded(agent: Agent) -> None:
    agent.start("u1", PY, "-c", "import sys; print('oops', flush=True); sys.exit(7)")
    agent.wait_state("u1", "Failed")
    assert agent.exit_file("u1") == "7\n"
    assert agent.logs("u1") == b"oops\n"


def test_command_killed_by_a_signal_is_failed_with_the_signal_recorded(agent: Agent) -> None:
    agent.start("u1", PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    agent.wait_state("u1", "Failed")
    assert agent.exit_file("u1") == "signal 9\n"


def test_missing_program_is_failed_with_127_and_the_reason_in_the_log(
        agent: Agent, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    agent.start("u1", missing, "arg")
    agent.wait_state("u1", "Failed")
    assert agent.exit_file("u1") == "127\n"
    assert missing.encode() in agent.logs("u1")


def test_stderr_goes_to_the_log_too(agent: Agent) -> None:
    agent.start("u1", PY, "-c", "import sys; sys.stderr.write('to stderr\\n')")
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == b"to stderr\n"


def test_run_on_an_in_progress_unit_is_refused_and_changes_nothing(
        agent: Agent, go: Path, tmp_path: Path) -> None:
    agent.start("u1", PY, "-c", GATED, str(go))
    wait_for(lambda: agent.logs("u1") == b"started\n", "the command to start")
    directory = agent.root / "u1"
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    marker = tmp_path / "second-ran"

    result = agent.run("u1", PY, "-c", f"open({str(marker)!r}, 'w'); print('second')")

    assert result.returncode == 3
    assert one_line(result.stderr) and b"InProgress" in result.stderr
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before
    assert agent.pid("u1") in group_members(agent.pid("u1"))
    assert agent.state("u1") == "InProgress"
    go.touch()
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == b"started\nfinished\n"
    assert not marker.exists()


def test_concurrent_runs_of_one_unit_start_it_once(agent: Agent, go: Path) -> None:
    command = [PY, str(AGENT), "--root", str(agent.root), "unit", "run", "u1", "--",
               PY, "-c", GATED, str(go)]
    runs = [subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=measured_env()) for _ in range(4)]
    assert sorted(run.wait(timeout=60) for run in runs) == [0, 3, 3, 3]
    wait_for(lambda: agent.logs("u1") == b"started\n", "the command to start")
    go.touch()
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == b"started\nfinished\n"


def test_run_on_a_finished_unit_cleans_it_and_starts_afresh(agent: Agent) -> None:
    agent.start("u1", PY, "-c", "import sys; print('first', flush=True); sys.exit(7)")
    agent.wait_state("u1", "Failed")
    first_pid = agent.pid("u1")
    agent.start("u1", PY, "-c", "print('second')")
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == b"second\n"
    assert agent.exit_file("u1") == "0\n"
    assert agent.pid("u1") != first_pid


def test_unit_whose_process_group_is_killed_with_sigkill_is_failed(
        agent: Agent, go: Path) -> None:
    agent.start("u1", PY, "-c", GATED, str(go))
    pid = agent.pid("u1")
    os.killpg(pid, signal.SIGKILL)
    agent.wait_state("u1", "Failed")
    assert not (agent.root / "u1" / "exit").exists()
    assert group_members(pid) == []


# Becomes a child subreaper that never reaps, runs a unit, SIGKILLs its group and prints what
# `check` says while the unit's processes are zombies (as under an init that does not reap).
REAPERLESS = """
import ctypes, os, signal, subprocess, sys, time
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
agent = sys.argv[1:]
sleeper = [sys.executable, '-c', 'import time; time.sleep(120)']
subprocess.run([*agent, 'run', 'u1', '--', *sleeper], check=True, stdin=subprocess.DEVNULL)
pid = int(open(os.path.join(agent[3], 'u1', 'pid')).read())
os.killpg(pid, signal.SIGKILL)
def stat(pid):
    return open(f'/proc/{pid}/stat', 'rb').read().rpartition(b')')[2].split()[0].decode()
deadline = time.monotonic() + 20
while stat(pid) != 'Z' and time.monotonic() < deadline:
    time.sleep(0.02)
check = subprocess.run([*agent, 'check', 'u1'], capture_output=True, text=True)
print(stat(pid), check.stdout)
"""


def test_unit_whose_processes_are_unreaped_zombies_is_failed(agent: Agent) -> None:
    helper = subprocess.run(
        [PY, "-c", REAPERLESS, PY, str(AGENT), "--root", str(agent.root), "unit"],
        capture_output=True, text=True, timeout=60, check=False, env=measured_env())
    assert (helper.returncode, helper.stdout, helper.stderr) == (0, "Z Failed\n", "")


def test_unit_from_a_previous_boot_is_failed_even_if_its_pid_is_in_use(
        agent: Agent, go: Path) -> None:
    agent.start("u1", PY, "-c", GATED, str(go))
    assert agent.state("u1") == "InProgress"
    (agent.root / "u1" / "boot").write_text("00000000-0000-0000-0000-000000000000\n")
    assert group_members(agent.pid("u1"))
    assert agent.state("u1") == "Failed"


def test_stop_terminates_the_whole_group_and_records_stopped(agent: Agent) -> None:
    spawner = ("import subprocess, sys, time\n"
               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
               "print('child up', flush=True)\n"
               "time.sleep(120)\n")
    agent.start("u1", PY, "-c", spawner)
    pid = agent.pid("u1")
    wait_for(lambda: agent.logs("u1") == b"child up\n", "the grandchild to start")
    assert len(group_members(pid)) == 3  # supervisor, command, its child

    result = agent("stop", "u1")

    assert (result.returncode, result.stderr) == (0, b"")
    assert agent.state("u1") == "Failed"
    assert agent.exit_file("u1") == "stopped\n"
    assert group_members(pid) == []


def test_stop_kills_a_command_that_ignores_sigterm_once_the_grace_is_over(agent: Agent) -> None:
    stubborn = ("import signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('ignoring SIGTERM', flush=True)\n"
                "time.sleep(120)\n")
    agent.start("u1", PY, "-c", stubborn)
    pid = agent.pid("u1")
    wait_for(lambda: agent.logs("u1") == b"ignoring SIGTERM\n", "the handler to be set")

    assert agent("stop", "u1", "--grace", "0.2").returncode == 0

    assert group_members(pid) == []
    assert agent.state("u1") == "Failed"
    assert agent.exit_file("u1") == "stopped\n"


def test_stop_on_a_finished_or_unknown_unit_changes_nothing(agent: Agent) -> None:
    agent.start("u1", PY, "-c", "pass")
    agent.wait_state("u1", "Succeeded")
    assert agent("stop", "u1").returncode == 0
    assert agent.exit_file("u1") == "0\n"
    assert agent.state("u1") == "Succeeded"
    assert agent("stop", "ghost").returncode == 0
    assert not (agent.root / "ghost").exists()


def test_clean_refuses_while_in_progress_and_changes_nothing(agent: Agent, go: Path) -> None:
    agent.start("u1", PY, "-c", GATED, str(go))
    directory = agent.root / "u1"
    before = sorted(path.name for path in directory.iterdir())

    result = agent("clean", "u1")

    assert result.returncode == 3
    assert one_line(result.stderr) and b"InProgress" in result.stderr
    assert sorted(path.name for path in directory.iterdir()) == before
    assert agent.state("u1") == "InProgress"


@pytest.mark.parametrize(("code", "state"), [("pass", "Succeeded"), ("exit(4)", "Failed")])
def test_clean_removes_the_directory_of_a_finished_unit(
        agent: Agent, code: str, state: str) -> None:
    agent.start("u1", PY, "-c", code)
    agent.wait_state("u1", state)

    result = agent("clean", "u1")

    assert (result.returncode, result.stderr) == (0, b"")
    assert not (agent.root / "u1").exists()
    assert agent.state("u1") == "NotStarted"
    assert agent.logs("u1") == b""


def test_clean_of_an_unknown_unit_is_a_no_op_that_creates_nothing(
        agent: Agent, tmp_path: Path) -> None:
    assert agent("clean", "ghost").returncode == 0
    assert list(tmp_path.iterdir()) == []


def test_unit_keeps_running_after_run_and_its_callers_session_are_gone(
        agent: Agent, go: Path) -> None:
    # The caller stands in for an SSH session: its own session, hung up and killed after `run`.
    run = shlex.join([PY, str(AGENT), "--root", str(agent.root), "unit", "run", "u1", "--",
                      PY, "-c", GATED, str(go)])
    caller = subprocess.Popen(["sh", "-c", f"{run} </dev/null && echo ran && exec sleep 120"],
                              stdout=subprocess.PIPE, start_new_session=True, env=measured_env())
    assert caller.stdout is not None
    assert caller.stdout.readline() == b"ran\n"
    os.killpg(caller.pid, signal.SIGHUP)
    os.killpg(caller.pid, signal.SIGKILL)
    caller.wait(timeout=60)
    caller.stdout.close()

    pid = agent.pid("u1")
    assert agent.state("u1") == "InProgress"
    assert pid in group_members(pid)
    parent = int(Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[1])
    assert parent not in (os.getpid(), caller.pid)
    assert os.getsid(pid) == pid != os.getsid(0)
    log = str(agent.root / "u1" / "log")
    assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null", log, log]
    go.touch()
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == b"started\nfinished\n"


def files_containing(needle: bytes, top: Path, since: float = 0.0) -> list[Path]:
    """Regular files under top, changed at or after `since`, whose bytes contain needle."""
    found = []
    for directory, _, names in os.walk(top):
        for name in names:
            path = Path(directory, name)
            try:
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_ctime >= since \
                        and needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def processes_exposing(needle: bytes) -> list[str]:
    """/proc/*/cmdline and /proc/*/environ (the readable ones) that contain needle."""
    found = []
    for path in [*Path("/proc").glob("[0-9]*/cmdline"), *Path("/proc").glob("[0-9]*/environ")]:
        try:
            if needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def test_secret_on_stdin_reaches_the_command_and_is_never_exposed(
        agent: Agent, go: Path) -> None:
    started = time.time() - 1
    token = secrets.token_hex(32).encode()
    secret = b"kek:" + token + b"\x00\xff trailing whitespace stays \n"
    hasher = ("import hashlib, os, sys, time\n"
              "print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest(), flush=True)\n"
              "while not os.path.exists(sys.argv[1]):\n"
              "    time.sleep(0.02)\n")
    agent.start("u1", PY, "-c", hasher, str(go), stdin=secret)
    digest = wait_for(lambda: re.fullmatch(rb"([0-9a-f]{64})\n", agent.logs("u1")),
                      "the command to hash its stdin")
    assert digest is not None
    assert digest.group(1).decode() == hashlib.sha256(secret).hexdigest()
    assert agent.state("u1") == "InProgress"
    assert processes_exposing(token) == []
    go.touch()
    agent.wait_state("u1", "Succeeded")
    assert files_containing(token, agent.root) == []
    assert files_containing(token, Path("/tmp"), since=started) == []
    assert files_containing(token, Path("/dev/shm"), since=started) == []


def test_empty_stdin_gives_the_command_an_empty_stdin_that_ends(agent: Agent) -> None:
    agent.start("u1", PY, "-c", "import sys; print(repr(sys.stdin.buffer.read()))")
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == b"b''\n"


def test_argv_words_arrive_verbatim(agent: Agent, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    words = ["a b", "it's", '"double"', "$(touch pwned)", "`touch pwned2`", "line1\nline2",
             "", "--", "--cwd", "*", "; touch pwned3", "back\\slash", "tab\there", "ünï€",
             "-x", "$HOME"]
    printer = "import sys; sys.stdout.buffer.write(b'\\0'.join(map(str.encode, sys.argv[1:])))"
    assert agent("run", "u1", "--cwd", str(work), "--", PY, "-c", printer, *words).returncode == 0
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == b"\0".join(word.encode() for word in words)
    assert list(work.iterdir()) == []


def test_cwd_sets_the_working_directory_of_the_command(agent: Agent, tmp_path: Path) -> None:
    result = agent("run", "u1", "--cwd", str(tmp_path), "--", PY, "-c",
                   "import os; print(os.getcwd())")
    assert result.returncode == 0
    agent.wait_state("u1", "Succeeded")
    assert agent.logs("u1") == f"{tmp_path}\n".encode()


def test_run_with_a_missing_cwd_is_bad_usage_and_creates_nothing(
        agent: Agent, tmp_path: Path) -> None:
    result = agent("run", "u1", "--cwd", str(tmp_path / "absent"), "--", PY, "-c", "pass")
    assert result.returncode == 2
    assert one_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("words", [
    ("run", "u1"), ("run", "u1", "--"), ("check", "u1", "--", "x"), ("stop", "u1", "--grace", "x"),
    ("frobnicate", "u1"), ("check",)])
def test_malformed_commands_are_bad_usage_and_create_nothing(
        agent: Agent, tmp_path: Path, words: tuple[str, ...]) -> None:
    result = agent(*words)
    assert result.returncode == 2
    assert one_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../x", "", "a/b", ".hidden", "-x", "a b", "x" * 101, "/abs"])
def test_invalid_unit_names_are_refused_with_exit_2_and_create_nothing(
        agent: Agent, tmp_path: Path, name: str) -> None:
    for words in (("run", name, "--", PY, "-c", "open('made', 'w')"), ("check", name),
                  ("clean", name), ("stop", name), ("logs", name)):
        result = agent(*words)
        assert (result.returncode, result.stdout) == (2, b""), words
        assert one_line(result.stderr), words
    assert list(tmp_path.iterdir()) == []


def test_longest_valid_unit_name_is_accepted(agent: Agent) -> None:
    name = "A" + "z9_.-" * 19 + "abcd"
    assert len(name) == 100
    agent.start(name, PY, "-c", "pass")
    agent.wait_state(name, "Succeeded")


def test_check_on_an_unknown_unit_prints_not_started_and_creates_nothing(
        agent: Agent, tmp_path: Path) -> None:
    result = agent("check", "ghost")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"NotStarted", b"")
    assert agent.logs("ghost") == b""
    assert list(tmp_path.iterdir()) == []


def test_state_directory_and_files_are_private(agent: Agent) -> None:
    agent.start("u1", PY, "-c", "print('x')")
    agent.wait_state("u1", "Succeeded")
    directory = agent.root / "u1"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
    assert modes == {"pid": 0o600, "boot": 0o600, "log": 0o600, "exit": 0o600}
