"""The host agent (lib/host) on a host: its version, deploying it, and its unit commands.

The agent lives in `~/.imagecp/agent/<version>/` on the host, `current` links to the version
in use; the version is a hash of the agent's files, so a control plane with a newer agent
sees the difference and deploys again. Commands run from the account's home directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from pathlib import Path

from lib.ssh.session import Target, cmd

SOURCE = Path(__file__).resolve().parent.parent / "host"
HOME = ".imagecp/agent"
AGENT = f"{HOME}/current/agent.py"
UNITS = ".imagecp/units"  # the agent's default unit root, relative to the home directory
MIN_PYTHON = (3, 9)
# The archive commands need these; the unit runner needs only the standard library.
MODULES = ("zstandard", "cryptography", "obstore")


@cache
def files() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(SOURCE.glob("*.py"))}


@cache
def version() -> str:
    digest = hashlib.sha256()
    for name, content in files().items():
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()[:16]


async def installed_version(target: Target) -> str | None:
    out = await cmd(target, "readlink :link || true", link=f"{HOME}/current")
    return out.strip().rsplit("/", 1)[-1] or None


async def check_prerequisites(target: Target) -> None:
    """Raises SshCommandFailed naming what the host's Python lacks."""
    await cmd(target, ":python -c :code", python=target.python, code=(
        "import sys, importlib.util as u; v = sys.version_info[:2]; "
        f"missing = [m for m in {MODULES!r} if u.find_spec(m) is None]; "
        f"sys.exit(sys.executable + ' is ' + '.'.join(map(str, v)) + ', the agent needs "
        f"{'.'.join(map(str, MIN_PYTHON))}' if v < {MIN_PYTHON} else "
        "sys.executable + ' lacks the modules ' + ', '.join(missing) if missing else 0)"))


async def deploy(target: Target) -> str:
    """Install this control plane's agent and point `current` at it; idempotent."""
    directory = f"{HOME}/{version()}"
    staging = f"{directory}.partial"
    await cmd(target, "rm -rf :staging && mkdir -p :staging", staging=staging)
    for name, content in files().items():
        await cmd(target, "cat > :path", path=f"{staging}/{name}", stdin=content)
    await cmd(target, "rm -rf :directory && mv :staging :directory && ln -sfn :version :link",
              staging=staging, directory=directory, version=version(), link=f"{HOME}/current")
    return version()


def unit_file(name: str, file: str) -> str:
    """A file in a unit's state directory: it goes when the unit is cleaned."""
    return f"{UNITS}/{name}/{file}"


async def unit(target: Target, command: str, name: str) -> str:
    """`check`, `clean`, `stop` or `logs` of a unit; returns what the agent printed."""
    if command not in ("check", "clean", "stop", "logs"):
        raise ValueError(f"unknown unit command {command!r}")
    return await cmd(target, ":python :agent unit :command :name", python=target.python,
                     agent=AGENT, command=command, name=name)


async def run_unit(target: Target, name: str, argv: list[str], *,
                   stdin: bytes | str | None = None) -> None:
    """Start a detached unit; `stdin` (a secret) reaches its command only through pipes."""
    await cmd(target, ":python :agent unit run :name -- :shelljoin_argv", python=target.python,
              agent=AGENT, name=name, argv=argv, stdin=stdin if stdin is not None else "")


def archive_secrets(store: dict[str, str], prefix: str, kek: bytes) -> str:
    """What the archive commands read on stdin: where the archive is and its key."""
    return json.dumps({"store": store, "prefix": prefix, "kek": base64.b64encode(kek).decode()})


async def start_archive(target: Target, name: str, disk: str, secrets: str) -> None:
    """Start archiving `disk` as unit `name`; its stats and progress files live in the unit."""
    await run_unit(target, name, [
        target.python, AGENT, "archive", "create", "--disk", disk,
        "--stats", unit_file(name, "stats.json"), "--progress", unit_file(name, "progress.json")],
        stdin=secrets)


async def archive_stats(target: Target, name: str) -> dict[str, int]:
    out = await cmd(target, "cat :path", path=unit_file(name, "stats.json"))
    stats: dict[str, int] = json.loads(out)
    return stats


async def archive_tool(target: Target, command: str, secrets: str, *args: str) -> str:
    """Run `archive restore --output PATH` or `archive verify` on the host, in the session."""
    if command not in ("restore", "verify"):
        raise ValueError(f"unknown archive command {command!r}")
    return await cmd(target, ":python :agent archive :command :shelljoin_args",
                     python=target.python, agent=AGENT, command=command, args=list(args),
                     stdin=secrets)
