"""A private PostgreSQL cluster made from the system's binaries, for tests that must own
their server (restarting it mid-run) and for bin/test where no server answers.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` account.

    python -m spec.support.pgcluster ensure DIR PORT   # initialise if needed, start if stopped
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def bindir() -> Path:
    """The newest installed PostgreSQL bin directory, installing the OS packages if needed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return bindir()
    return Path(found[-1]).parent


def answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


class Cluster:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root.resolve()
        self.port = port
        self.data = self.root / "data"
        self.bin = bindir()

    def _as_owner(self, *command: str) -> list[str]:
        if os.geteuid() != 0:
            return list(command)
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root needs runuser to start PostgreSQL as postgres")
        return ["runuser", "-u", "postgres", "--", *command]

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", "postgres"],
                               check=True)
            shutil.chown(self.root, "postgres")
            for parent in self.root.parents:  # let postgres reach its directory
                parent.chmod(parent.stat().st_mode | 0o001)

    def init(self) -> None:
        self._prepare()
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(self._as_owner(str(self.bin / "initdb"), "-D", str(self.data),
                                          "-U", "postgres", "--auth=trust", "--no-sync"),
                           check=True, stdout=subprocess.DEVNULL)

    def _ctl(self, action: str) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port}"
                   f" -c unix_socket_directories={self.root} -c fsync=on")
        subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w",
                                      "-l", str(self.root / "server.log"), "-o", options,
                                      "-m", "fast", action),
                       check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop")

    def restart(self) -> None:
        self._ctl("restart")

    def ensure(self) -> None:
        self.init()
        if not answers("127.0.0.1", self.port):
            self.start()
        deadline = time.monotonic() + 30
        while not answers("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not come up on port {self.port}")
            time.sleep(0.1)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "ensure":
        sys.exit("usage: python -m spec.support.pgcluster ensure DIR PORT")
    Cluster(Path(sys.argv[2]), int(sys.argv[3])).ensure()
