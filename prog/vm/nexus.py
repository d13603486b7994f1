"""`Vm.Nexus`: a VM's life as captures see it — running, stopped, destroyed.

running ⇄ stopped on `stop` / `start`; `destroy` removes the disks on the host and the rows.
While a capture pins the VM, a start is refused and a destroy waits until the pin is gone:
nothing may write to, or delete, a disk that is being archived.
"""

from __future__ import annotations

from sqlalchemy import text

from lib import log, ssh, ubid
from model import vm
from model.sshable import target_of
from prog.base import Prog, label

PINNED_RETRY = 10

logger = log.get_logger(__name__)


class Nexus(Prog):
    semaphores = ("start", "stop", "destroy")

    @label
    async def running(self) -> None:
        if self.is_set("start"):
            await self.decr("start")  # already running: a stale start must not linger
        if self.is_set("stop"):
            await self.decr("stop")
            self.hop(self.stopped)
        self.hibernate()

    @label
    async def stopped(self) -> None:
        if self.is_set("stop"):
            await self.decr("stop")  # already stopped
        if self.is_set("start"):
            await self.decr("start")
            if not await vm.is_pinned(self.connection, self.strand_id):
                self.hop(self.running)
            logger.warning("vm start refused", vm=ubid.to_ubid(self.strand_id),
                           reason=vm.PINNED_START)
        self.hibernate()

    @label
    async def destroy(self) -> None:
        if await vm.is_pinned(self.connection, self.strand_id):
            self.nap(PINNED_RETRY)
        row = (await self.connection.execute(text("SELECT vm_host_id FROM vm WHERE id = :id"),
                                             {"id": self.strand_id})).one()
        paths = (await self.connection.execute(text(
            "SELECT path FROM vm_storage_volume WHERE vm_id = :id ORDER BY disk_index"),
            {"id": self.strand_id})).scalars().all()
        if row.vm_host_id is not None and paths:
            target = await target_of(self.connection, row.vm_host_id)
            await ssh.cmd(target, "rm -f -- :shelljoin_paths", paths=list(paths))
        await self.connection.execute(text("DELETE FROM vm_storage_volume WHERE vm_id = :id"),
                                      {"id": self.strand_id})
        await self.connection.execute(text("DELETE FROM vm WHERE id = :id"),
                                      {"id": self.strand_id})
        self.pop("vm destroyed")
