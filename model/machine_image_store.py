"""`machine_image_store`: where a location's archives live — a directory or an S3 bucket.

A row with no project is the location's default store, used by every project that has no
store of its own there (a capture resolves it in its request statement, assemble's
`_REQUEST`). S3 credentials are sealed under the master key, bound to their row.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, LargeBinary, String, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import crypto, ubid
from model.base import Base

KINDS = ("directory", "s3")


class MachineImageStore(Base):
    __tablename__ = "machine_image_store"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("project.id"))
    location_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("location.id"))
    kind: Mapped[str] = mapped_column(String(collation="C"))
    path: Mapped[str | None]  # directory: an absolute path, the same on hosts and here
    endpoint: Mapped[str | None]
    region: Mapped[str | None]
    bucket: Mapped[str | None]
    access_key_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    secret_key_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


def _where(store_id: uuid.UUID, column: str) -> str:
    return f"machine_image_store.{column}:{store_id}"


class StoreRefused(ValueError):
    """A store cannot be added as asked; the message says why. Nothing was written."""


async def create(connection: AsyncConnection, *, location_id: uuid.UUID,
                 project_id: uuid.UUID | None, master_key: bytes, kind: str,
                 path: str | None = None, endpoint: str | None = None,
                 region: str | None = None, bucket: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None) -> uuid.UUID:
    if kind == "directory":
        if not path or not path.startswith("/"):
            raise StoreRefused("a directory store needs an absolute path")
    elif kind == "s3":
        if not (endpoint and region and bucket and access_key and secret_key):
            raise StoreRefused("an s3 store needs an endpoint, region, bucket, access key"
                               " and secret key")
    else:
        raise StoreRefused(f"a store is one of {', '.join(KINDS)}, not {kind!r}")
    store_id = ubid.generate(ubid.TYPE_MACHINE_IMAGE_STORE)

    def seal(value: str | None, column: str) -> bytes | None:
        return None if value is None else crypto.seal(master_key, value.encode(),
                                                      _where(store_id, column))

    await connection.execute(text(
        "INSERT INTO machine_image_store (id, project_id, location_id, kind, path, endpoint,"
        " region, bucket, access_key_sealed, secret_key_sealed) VALUES (:id, :project_id,"
        " :location_id, :kind, :path, :endpoint, :region, :bucket, :access, :secret)"),
        {"id": store_id, "project_id": project_id, "location_id": location_id, "kind": kind,
         "path": path, "endpoint": endpoint, "region": region, "bucket": bucket,
         "access": seal(access_key, "access_key_sealed"),
         "secret": seal(secret_key, "secret_key_sealed")})
    return store_id


async def description(connection: AsyncConnection, store_id: uuid.UUID,
                      master_key: bytes) -> dict[str, Any]:
    """How the host agent (lib/host/objects.py) opens the store, credentials included."""
    row = (await connection.execute(text("SELECT * FROM machine_image_store WHERE id = :id"),
                                    {"id": store_id})).one()
    if row.kind == "directory":
        return {"kind": "directory", "path": row.path}
    return {"kind": "s3", "endpoint": row.endpoint, "region": row.region, "bucket": row.bucket,
            "access_key": crypto.unseal(master_key, row.access_key_sealed,
                                        _where(store_id, "access_key_sealed")).decode(),
            "secret_key": crypto.unseal(master_key, row.secret_key_sealed,
                                        _where(store_id, "secret_key_sealed")).decode()}
