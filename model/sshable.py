"""`sshable`: how to reach a host over SSH — address, user, pinned host keys, client key."""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, LargeBinary, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import crypto
from lib.ssh import Target
from model.base import Base


def client_key_where(host_id: uuid.UUID | str) -> str:
    """The associated data binding a sealed client key to its row."""
    return f"sshable.client_key_sealed:{host_id}"


class Sshable(Base):
    __tablename__ = "sshable"
    __table_args__ = (UniqueConstraint("address", "port"),)

    id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vm_host.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(collation="C"))
    port: Mapped[int] = mapped_column(server_default="22")
    unix_user: Mapped[str] = mapped_column(String(collation="C"), server_default="imagecp")
    # OpenSSH public key lines; every connection must present one of them.
    host_keys: Mapped[list[str]] = mapped_column(ARRAY(String), server_default="{}")
    # With no key pinned yet: pin the first one seen (trust on first use).
    accept_new: Mapped[bool] = mapped_column(server_default="false")
    client_key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    client_public_key: Mapped[str]
    # Runs the agent; a Python with zstandard, cryptography and obstore.
    python: Mapped[str] = mapped_column(server_default="python3")

    def client_private_key(self, master_key: bytes) -> bytes:
        return crypto.unseal(master_key, self.client_key_sealed, client_key_where(self.id))

    def target(self, master_key: bytes) -> Target:
        """How lib/ssh reaches this host, with the client key opened in memory."""
        return Target(id=self.id, address=self.address, port=self.port, user=self.unix_user,
                      host_keys=tuple(self.host_keys), accept_new=self.accept_new,
                      client_key=self.client_private_key(master_key), python=self.python)


async def target_of(connection: AsyncConnection, host_id: uuid.UUID) -> Target:
    """How to reach a host, with its client key opened under the configured master key."""
    row = (await connection.execute(text("SELECT * FROM sshable WHERE id = :id"),
                                    {"id": host_id})).one()
    return Sshable(**row._mapping).target(crypto.master_key())
