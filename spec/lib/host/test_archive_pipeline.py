"""lib/host/archive_pipeline.disk_snapshot: a reflink copy where the filesystem can clone (a
real XFS filesystem on a loop device), the disk itself, read in place, where it cannot (a
tmpfs). Mounting needs root, as the test suite has."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HOST = Path(__file__).resolve().parents[3] / "lib" / "host"
sys.path.append(str(HOST))  # the pipeline imports its siblings, as it does on a host
from lib.host import archive_pipeline  # noqa: E402

BEFORE, AFTER = b"a" * 65536, b"b" * 65536


@contextmanager
def mounted(mount: Path, *source: str) -> Iterator[Path]:
    mount.mkdir()
    subprocess.run(["mount", *source, str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)])  # a failure here must not hide the test's


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A mounted XFS filesystem with reflinks, on a sparse image file."""
    image = tmp_path / "xfs.img"
    with open(image, "wb") as out:
        out.truncate(320 << 20)  # mkfs.xfs's smallest
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    with mounted(tmp_path / "xfs", "-o", "loop", str(image)) as mount:
        yield mount


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A filesystem that cannot clone files."""
    with mounted(tmp_path / "tmpfs", "-t", "tmpfs", "-o", "size=16m", "tmpfs") as mount:
        yield mount


def disk_in(directory: Path) -> Path:
    disk = directory / "disk.raw"
    disk.write_bytes(BEFORE)
    return disk


def test_where_the_filesystem_clones_the_snapshot_is_a_copy_later_writes_miss(
        xfs: Path) -> None:
    disk = disk_in(xfs)
    with archive_pipeline.disk_snapshot(str(disk)) as snapshot:
        assert os.fstat(snapshot).st_ino != disk.stat().st_ino
        with open(disk, "r+b") as writer:  # the disk changes under the archive
            writer.write(AFTER)
        assert os.pread(snapshot, len(BEFORE), 0) == BEFORE
        assert sorted(os.listdir(xfs)) == ["disk.raw"]  # the copy has no name
    assert disk.read_bytes() == AFTER and sorted(os.listdir(xfs)) == ["disk.raw"]


def test_where_the_filesystem_cannot_clone_the_disk_is_read_in_place(tmpfs: Path) -> None:
    disk = disk_in(tmpfs)
    with archive_pipeline.disk_snapshot(str(disk)) as snapshot:
        assert os.fstat(snapshot).st_ino == disk.stat().st_ino
        assert os.pread(snapshot, len(BEFORE), 0) == BEFORE
    assert sorted(os.listdir(tmpfs)) == ["disk.raw"]


def test_a_missing_disk_is_a_readable_archive_error(tmp_path: Path) -> None:
    with (pytest.raises(archive_pipeline.ArchiveError, match="cannot open the disk"),
          archive_pipeline.disk_snapshot(str(tmp_path / "none.raw"))):
        pass
