"""SQLAlchemy models, one table a file."""

from model.base import Base
from model.page import Page
from model.respirate_process import RespirateProcess
from model.semaphore import Semaphore
from model.strand import Strand

__all__ = ["Base", "Page", "RespirateProcess", "Semaphore", "Strand"]
