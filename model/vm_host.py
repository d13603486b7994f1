"""`vm_host`: a machine that holds VM disks; driven by its bootstrap strand (same id)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import crypto, ubid
from lib.ssh import keys
from model.base import Base
from model.sshable import client_key_where

STATES = ("bootstrapping", "ready", "unreachable", "refused")


class VmHost(Base):
    __tablename__ = "vm_host"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("location.id"))
    state: Mapped[str] = mapped_column(String(collation="C"), server_default="bootstrapping")
    # Why the host is not ready, in words an operator can act on.
    state_reason: Mapped[str | None]
    agent_version: Mapped[str | None] = mapped_column(String(collation="C"))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class HostRefused(ValueError):
    """A host cannot be added as asked; the message says why. Nothing was written."""


async def assemble(connection: AsyncConnection, *, location: str, address: str, port: int = 22,
                   user: str = "imagecp", host_key: str | None = None, accept_new: bool = False,
                   python: str = "python3", master_key: bytes) -> tuple[uuid.UUID, str]:
    """Add a host and start its bootstrap strand, in one transaction (the caller's).

    Returns the host's id and the public key the host must authorize for `user`.
    """
    if (host_key is None) == (not accept_new):
        raise HostRefused("give the host's public key (--host-key) or accept the first key seen"
                          " (--accept-new), not both")
    if not address.strip() or any(c.isspace() for c in address.strip()):
        raise HostRefused(f"invalid address {address!r}")
    if not 1 <= port <= 65535:
        raise HostRefused(f"port must be between 1 and 65535, got {port}")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise HostRefused(f"invalid unix user {user!r}")
    if not python.strip() or any(c.isspace() or c in "'\"\\" for c in python):
        raise HostRefused(f"invalid python {python!r}: a command name or an absolute path")
    try:
        pinned = [keys.normalize_host_key(host_key)] if host_key else []
    except keys.HostKeyError as error:
        raise HostRefused(f"--host-key: {error}") from None
    location_id = (await connection.execute(
        text("SELECT id FROM location WHERE name = :name"), {"name": location})).scalar()
    if location_id is None:
        raise HostRefused(f"no location named {location!r} (bin/ctl location create NAME)")
    taken = (await connection.execute(
        text("SELECT 1 FROM sshable WHERE address = :address AND port = :port"),
        {"address": address, "port": port})).scalar()
    if taken:
        raise HostRefused(f"a host at {address}:{port} exists already")
    host_id = ubid.generate(ubid.TYPE_VM_HOST)
    private, public = keys.new_client_key()
    sealed = crypto.seal(master_key, private, client_key_where(host_id))
    await connection.execute(text(
        "INSERT INTO vm_host (id, location_id) VALUES (:id, :location_id)"),
        {"id": host_id, "location_id": location_id})
    await connection.execute(text(
        "INSERT INTO sshable (id, address, port, unix_user, host_keys, accept_new,"
        " client_key_sealed, client_public_key, python) VALUES (:id, :address, :port, :user,"
        " :keys, :accept_new, :sealed, :public, :python)"),
        {"id": host_id, "address": address, "port": port, "user": user, "keys": pinned,
         "accept_new": accept_new, "sealed": sealed, "public": public, "python": python})
    await connection.execute(text(
        "INSERT INTO strand (id, prog, label) VALUES (:id, 'Host.Bootstrap', 'start')"),
        {"id": host_id})
    return host_id, public
