"""`storage_key_encryption_key`: a key that wraps an archive's data key; sealed at rest."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

from sqlalchemy import LargeBinary, String, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import crypto, ubid
from model.base import Base


def key_where(kek_id: uuid.UUID) -> str:
    return f"storage_key_encryption_key.key_sealed:{kek_id}"


class StorageKeyEncryptionKey(Base):
    __tablename__ = "storage_key_encryption_key"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(collation="C"), server_default="aes-256-gcm")
    key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    auth_data: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


def new(master_key: bytes) -> tuple[uuid.UUID, bytes]:
    """The id of a new random AES-256 key, and the key sealed under the master key for it."""
    kek_id = ubid.generate(ubid.TYPE_STORAGE_KEY_ENCRYPTION_KEY)
    return kek_id, crypto.seal(master_key, secrets.token_bytes(32), key_where(kek_id))


async def key(connection: AsyncConnection, kek_id: uuid.UUID, master_key: bytes) -> bytes:
    sealed = (await connection.execute(text(
        "SELECT key_sealed FROM storage_key_encryption_key WHERE id = :id"),
        {"id": kek_id})).scalar_one()
    return crypto.unseal(master_key, sealed, key_where(kek_id))
