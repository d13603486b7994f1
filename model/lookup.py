"""Find the row an id names, from the type prefix of its UBID."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from lib import ubid
from model.base import Base
from model.location import Location
from model.machine_image import MachineImage
from model.machine_image_store import MachineImageStore
from model.machine_image_version import MachineImageVersion
from model.page import Page
from model.project import Project
from model.semaphore import Semaphore
from model.storage_key_encryption_key import StorageKeyEncryptionKey
from model.strand import Strand
from model.vm import Vm
from model.vm_host import VmHost
from model.vm_storage_volume import VmStorageVolume

# The model that mints each prefix. Shared ids (a nexus strand has its subject's id) resolve
# to the minting model, not to the strand.
BY_PREFIX: dict[str, type[Base]] = {
    ubid.TYPE_STRAND: Strand,
    ubid.TYPE_SEMAPHORE: Semaphore,
    ubid.TYPE_PAGE: Page,
    ubid.TYPE_LOCATION: Location,
    ubid.TYPE_PROJECT: Project,
    ubid.TYPE_VM: Vm,
    ubid.TYPE_VM_HOST: VmHost,
    ubid.TYPE_VM_STORAGE_VOLUME: VmStorageVolume,
    ubid.TYPE_MACHINE_IMAGE: MachineImage,
    ubid.TYPE_MACHINE_IMAGE_VERSION: MachineImageVersion,
    ubid.TYPE_MACHINE_IMAGE_STORE: MachineImageStore,
    ubid.TYPE_STORAGE_KEY_ENCRYPTION_KEY: StorageKeyEncryptionKey,
}


async def by_ubid(session: AsyncSession, text: str) -> Base | None:
    """The row named by a UBID string; None when malformed, of an unknown type, or absent."""
    try:
        value = ubid.to_uuid(text)
    except ubid.UbidParseError:
        return None
    model = BY_PREFIX.get(text[:2].lower())
    return None if model is None else await session.get(model, value)
