"""`machine_image_version_metal`: where a version's archive is and how far its capture got.

Shares its id with its version and with the version's `MachineImage.VersionNexus` strand.
`pinned_source_vm_id` is unique: one capture per VM at a time, enforced by the database.
"""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from model.base import Base

STATUSES = ("creating", "ready", "destroying", "failed")


class MachineImageVersionMetal(Base):
    __tablename__ = "machine_image_version_metal"

    id: Mapped[uuid.UUID] = mapped_column(ForeignKey("machine_image_version.id"),
                                          primary_key=True)
    status: Mapped[str] = mapped_column(String(collation="C"))
    archive_size_mib: Mapped[int | None]
    archive_kek_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("storage_key_encryption_key.id"))
    store_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("machine_image_store.id"))
    store_prefix: Mapped[str] = mapped_column(String(collation="C"))  # ends in "/"
    pinned_source_vm_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("vm.id"),
                                                                  unique=True)
    # Why a capture failed, for operators.
    failure_reason: Mapped[str | None]


# The state users see, for the metal row `m` (NULL when there is none). A destroy request
# shows at once, before the strand has moved the stored status.
STATE_OF_M = ("CASE WHEN m.id IS NULL THEN NULL WHEN EXISTS (SELECT 1 FROM semaphore s"
              " WHERE s.strand_id = m.id AND s.name IN ('destroy', 'destroying'))"
              " THEN 'destroying' ELSE m.status END")
_DISPLAY_STATE = text(f"SELECT {STATE_OF_M} FROM machine_image_version_metal m WHERE m.id = :id")
# Shared: a destroy moving the status away from `ready` waits for the lock holder's commit.
_DISPLAY_STATE_SHARED = text(f"{_DISPLAY_STATE.text} FOR SHARE OF m")


async def display_state(connection: AsyncConnection, version_id: uuid.UUID, *,
                        lock: bool = False) -> str | None:
    """The version's state as users see it; None when it has no metal record."""
    return (await connection.execute(_DISPLAY_STATE_SHARED if lock else _DISPLAY_STATE,
                                     {"id": version_id})).scalar()
