"""SQLAlchemy models, one table a file."""

from model.base import Base
from model.location import Location
from model.machine_image import MachineImage
from model.machine_image_store import MachineImageStore
from model.machine_image_version import MachineImageVersion
from model.machine_image_version_metal import MachineImageVersionMetal
from model.page import Page
from model.project import Project
from model.respirate_process import RespirateProcess
from model.semaphore import Semaphore
from model.sshable import Sshable
from model.storage_key_encryption_key import StorageKeyEncryptionKey
from model.strand import Strand
from model.vm import Vm
from model.vm_host import VmHost
from model.vm_storage_volume import VmStorageVolume

__all__ = ["Base", "Location", "MachineImage", "MachineImageStore", "MachineImageVersion",
           "MachineImageVersionMetal", "Page", "Project", "RespirateProcess", "Semaphore",
           "Sshable", "StorageKeyEncryptionKey", "Strand", "Vm", "VmHost", "VmStorageVolume"]
