"""`vm_storage_volume`: one disk of a VM, a file on the VM's host."""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, ForeignKey, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from model.base import Base


class VmStorageVolume(Base):
    __tablename__ = "vm_storage_volume"
    __table_args__ = (UniqueConstraint("vm_id", "disk_index"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    vm_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("vm.id"))
    disk_index: Mapped[int]
    path: Mapped[str]  # absolute, on the VM's host
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # The version this disk was restored from: its objects stay while the disk needs them.
    machine_image_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("machine_image_version.id"))
