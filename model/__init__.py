"""SQLAlchemy models, one table a file."""

from model.base import Base
from model.location import Location
from model.page import Page
from model.respirate_process import RespirateProcess
from model.semaphore import Semaphore
from model.sshable import Sshable
from model.strand import Strand
from model.vm_host import VmHost

__all__ = ["Base", "Location", "Page", "RespirateProcess", "Semaphore", "Sshable", "Strand",
           "VmHost"]
