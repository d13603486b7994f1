"""Real OpenSSH sshd processes for tests: one per host, on its own 127.0.0.x address and port,
with generated host and client keys, logging in a dedicated account with a plain shell."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import asyncssh

from lib import ubid
from lib.ssh import Target

SSHD = "/usr/sbin/sshd"
HOST_USER = "imagecp"


def ensure_host_user() -> str:
    """The account tests log in as: a plain /bin/sh (root's start-up files cost ~160 ms a
    command) and a password field of `*` (a locked `!` account is refused even with a key)."""
    try:
        pwd.getpwnam(HOST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", HOST_USER], check=True)
    shadow = {line.split(":")[0]: line.split(":")[1]
              for line in Path("/etc/shadow").read_text().splitlines() if ":" in line}
    if shadow.get(HOST_USER) != "*":  # rewriting /etc/shadow races logins in progress
        subprocess.run(["usermod", "--password", "*", HOST_USER], check=True)
    return HOST_USER


def host_python() -> str:
    """The test hosts' Python with the agent's archive modules (bin/setup-env makes it)."""
    path = os.environ.get("IMAGECP_TEST_HOST_PYTHON", "")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError("IMAGECP_TEST_HOST_PYTHON is unset or not executable:"
                           " run the tests with bin/test, which creates var/host-python")
    return path


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def client_key() -> tuple[bytes, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.export_private_key(), key.export_public_key().decode().strip()


@dataclass
class TestHost:
    """One sshd; `target` reaches it with its host key pinned."""

    __test__ = False  # a fixture object, not a pytest class

    directory: Path
    address: str
    port: int
    target: Target
    client_public: str = ""  # the public half of target's client key
    process: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> str:
        return (self.directory / "host_key.pub").read_text().strip()

    def _write_config(self) -> None:
        d = self.directory
        (d / "sshd_config").write_text(f"""
Port {self.port}
ListenAddress {self.address}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {HOST_USER}
LogLevel VERBOSE
""")

    def new_host_key(self) -> None:
        for name in ("host_key", "host_key.pub"):
            (self.directory / name).unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(self.directory / "host_key")], check=True)

    def authorize(self, *public_keys: str) -> None:
        """Exactly these client keys may log in."""
        path = self.directory / "authorized_keys"
        path.write_text("".join(key + "\n" for key in public_keys))
        path.chmod(0o644)

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)
        self._write_config()
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.directory / "sshd_config")],
            stdout=subprocess.DEVNULL, stderr=(self.directory / "sshd.log").open("ab"))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {self.log()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def log(self) -> str:
        path = self.directory / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def with_pins(self, *keys: str, accept_new: bool = False) -> Target:
        return replace(self.target, host_keys=tuple(keys), accept_new=accept_new)


def start_host(directory: Path, index: int) -> TestHost:
    """An sshd on 127.0.0.<index+2>, with a host key, and a client key authorized for it."""
    if not Path(SSHD).exists():
        raise RuntimeError("sshd is missing: bin/test installs openssh-server")
    ensure_host_user()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # sshd reads authorized_keys as the host's account
    address = f"127.0.0.{index + 2}"
    port = free_port(address)
    private, public = client_key()
    host = TestHost(directory, address, port, Target(
        id=ubid.generate(ubid.TYPE_VM_HOST), address=address, port=port, user=HOST_USER,
        host_keys=(), accept_new=False, client_key=private, python=host_python()),
        client_public=public)
    host.new_host_key()
    host.authorize(public)
    host.target = host.with_pins(host.host_key)
    host.start()
    return host


def sessions_of(host: TestHost) -> list[int]:
    """Pids of the sshd monitors, one per open connection, serving our user."""
    out = subprocess.run(["pgrep", "-f", f"sshd: {HOST_USER} \\[priv\\]"],
                         capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def home_of_host_user() -> Path:
    return Path(pwd.getpwnam(HOST_USER).pw_dir)

