"""`Host.Bootstrap`: make a host usable — reach it, pin its key, install the agent.

start → install → wait. A host that cannot be reached is `unreachable` and retried every
minute; one whose key does not match, or that refuses our client key or lacks prerequisites,
is `refused` and retried every ten minutes. Either way the reason is on the host row.
"""

from __future__ import annotations

from sqlalchemy import text

from lib import ssh
from lib.ssh import agent
from model.sshable import target_of
from prog.base import Prog, label

UNREACHABLE_RETRY = 60
REFUSED_RETRY = 600
CHECK_AGENT_EVERY = 3600


class Bootstrap(Prog):
    async def _target(self) -> ssh.Target:
        return await target_of(self.connection, self.strand_id)

    async def _state(self, state: str, reason: str | None = None) -> None:
        await self.connection.execute(
            text("UPDATE vm_host SET state = :state, state_reason = :reason WHERE id = :id"),
            {"state": state, "reason": reason, "id": self.strand_id})

    @label
    async def start(self) -> None:
        target = await self._target()
        try:
            async with ssh.run_scope() as sessions:
                await agent.check_prerequisites(target)
        except ssh.SshUnreachable as error:
            refused = isinstance(error, ssh.HostKeyMismatch | ssh.ClientKeyRefused)
            await self._state("refused" if refused else "unreachable", str(error))
            self.nap(REFUSED_RETRY if refused else UNREACHABLE_RETRY)
        except ssh.SshCommandFailed as error:
            await self._state("refused", f"prerequisites: {error.stderr.strip() or error}")
            self.nap(REFUSED_RETRY)
        seen = sessions.seen_host_keys.get(target.id)
        if not target.host_keys and seen:
            await self.connection.execute(text(
                "UPDATE sshable SET host_keys = ARRAY[CAST(:key AS text)], accept_new = false"
                " WHERE id = :id"), {"key": " ".join(seen.split()[:2]), "id": self.strand_id})
        self.hop(self.install)

    @label
    async def install(self) -> None:
        target = await self._target()
        try:
            if await agent.installed_version(target) != agent.version():
                await agent.deploy(target)
        except ssh.SshUnreachable as error:
            await self._state("unreachable", str(error))
            self.nap(UNREACHABLE_RETRY)
        await self.connection.execute(text(
            "UPDATE vm_host SET state = 'ready', state_reason = NULL, agent_version = :version"
            " WHERE id = :id"), {"version": agent.version(), "id": self.strand_id})
        self.hop(self.wait)

    @label
    async def wait(self) -> None:
        """A control plane with a newer agent re-deploys it before using the host."""
        installed = (await self.connection.execute(
            text("SELECT agent_version FROM vm_host WHERE id = :id"),
            {"id": self.strand_id})).scalar()
        if installed != agent.version():
            self.hop(self.install)
        self.nap(CHECK_AGENT_EVERY)
