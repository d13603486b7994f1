"""A seeded world for capture tests: a location, a project, a bootstrapped real sshd host, a
store, an image, and VMs whose disks are real (sparse) files with known random data."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import crypto, db, ubid
from lib.config import load
from lib.scheduling.flow import Exit, StrandFailed
from lib.scheduling.runner import StrandRunner
from model import machine_image_store, vm, vm_host
from model import machine_image_version as versions
from spec.support import strands
from spec.support.sshd import HOST_USER, TestHost

MIB = 1 << 20


def owned_directory(prefix: str) -> Path:
    """A directory outside pytest's 0700 temporary root, owned by the hosts' account."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    account = pwd.getpwnam(HOST_USER)
    os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(0o755)
    return path


def make_disk(path: Path, size: int, extents: Iterable[tuple[int, int]] = (),
              seed: int = 1) -> str:
    """A sparse disk of `size` bytes with random data at (offset, length) extents; its SHA-256
    (empty for disks over 4 GiB: hashing their holes would take a while)."""
    import random

    generator = random.Random(seed)
    # Long extents repeat one random 8 MiB block (+ a varying tag): quick to write, and
    # still costly to archive, since chunks are compressed one by one.
    block = generator.randbytes(8 * MIB)
    with open(path, "wb") as disk:
        disk.truncate(size)
        for offset, length in extents:
            disk.seek(offset)
            for start in range(0, length, len(block)):
                piece = start.to_bytes(8, "little") + block[8:]
                disk.write(piece[:min(len(block), length - start)])
    account = pwd.getpwnam(HOST_USER)
    os.chown(path, account.pw_uid, account.pw_gid)
    return sha256_of(path) if size <= 4 << 30 else ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(MIB):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class World:
    engine: AsyncEngine
    host: TestHost | None
    host_id: uuid.UUID
    location_id: uuid.UUID
    project_id: uuid.UUID
    image_id: uuid.UUID
    store: Path
    disks: Path
    cleanup: list[Path] = field(default_factory=list)
    location: str = "lab"
    image: str = "base"

    async def vm(self, name: str, size: int = 8 * MIB,
                 extents: Iterable[tuple[int, int]] = ((0, MIB), (5 * MIB, 2 * MIB)),
                 **options: Any) -> tuple[uuid.UUID, Path, str]:
        """A VM with one disk holding random data; returns its id, disk path and SHA-256."""
        path = self.disks / f"{name}.raw"
        digest = make_disk(path, size, extents, seed=zlib.crc32(name.encode()))
        fields = {"project_id": self.project_id, "location_id": self.location_id,
                  "vm_host_id": self.host_id, "disks": [(str(path), size)], **options}
        async with self.engine.begin() as connection:
            vm_id = await vm.create(connection, name=name, **fields)
        return vm_id, path, digest

    async def capture(self, vm_id: uuid.UUID, version: str | None = "v1", **options: Any
                      ) -> uuid.UUID:
        config = load()
        fields = {"project_id": self.project_id, "location": self.location,
                  "image": self.image, "vm": ubid.to_ubid(vm_id), "version": version, **options}
        capture = versions.Capture(**fields)
        limits = versions.Limits(config.max_capture_gib, config.version_quota)
        async with db.transaction(self.engine) as connection:
            return await versions.assemble(connection, capture, limits,
                                           master_key=crypto.master_key())

    async def own_store(self, **fields: Any) -> uuid.UUID:
        """Give the project its own store here (fields as machine_image_store.create takes,
        e.g. an S3Server's `store` description)."""
        async with self.engine.begin() as connection:
            return await machine_image_store.create(
                connection, location_id=self.location_id, project_id=self.project_id,
                master_key=crypto.master_key(), **fields)

    def objects(self, version_prefix: str = "") -> list[str]:
        """Every object in the store (under a prefix), as paths relative to the store."""
        root = self.store / version_prefix
        return sorted(str(p.relative_to(self.store)) for p in root.rglob("*") if p.is_file())

    def close(self) -> None:
        for path in (self.store, self.disks, *self.cleanup):
            shutil.rmtree(path, ignore_errors=True)


async def build(engine: AsyncEngine, runner: StrandRunner | None = None,
                host: TestHost | None = None) -> World:
    """Seed a world; with a test host, bootstrap it for real (the agent is deployed over SSH).
    Without one, the host is a row nobody connects to: enough for checks that stay in SQL."""
    location_id, project_id, image_id = (ubid.generate(ubid.TYPE_LOCATION),
                                         ubid.generate(ubid.TYPE_PROJECT),
                                         ubid.generate_from_time(ubid.TYPE_MACHINE_IMAGE))
    store, disks = owned_directory("imagecp-store-"), owned_directory("imagecp-disks-")
    async with engine.begin() as connection:
        await connection.execute(text("INSERT INTO location (id, name) VALUES (:id, 'lab')"),
                                 {"id": location_id})
        await connection.execute(text("INSERT INTO project (id, name) VALUES (:id, 'acme')"),
                                 {"id": project_id})
        await connection.execute(text(
            "INSERT INTO machine_image (id, project_id, location_id, name, arch)"
            " VALUES (:id, :project_id, :location_id, 'base', 'x64')"),
            {"id": image_id, "project_id": project_id, "location_id": location_id})
        await machine_image_store.create(connection, location_id=location_id, project_id=None,
                                         kind="directory", path=str(store),
                                         master_key=crypto.master_key())
        if host is None:
            host_id, _ = await vm_host.assemble(connection, location="lab", address="unused",
                                                accept_new=True, master_key=crypto.master_key())
        else:
            host_id, public = await vm_host.assemble(
                connection, location="lab", address=host.address, port=host.port,
                host_key=host.host_key, python=host.target.python,
                master_key=crypto.master_key())
    if host is not None and runner is not None:
        host.authorize(host.client_public, public)
        await runner.run(host_id)
        assert await strands.scalar(engine, "SELECT state FROM vm_host WHERE id = :id",
                                    id=host_id) == "ready"
    return World(engine, host, host_id, location_id, project_id, image_id, store, disks)


async def drive(runner: StrandRunner, engine: AsyncEngine, strand_id: uuid.UUID,
                until: str | None, seconds: float = 60.0) -> Any:
    """Run a strand, skipping its naps, until it reaches label `until` (None: until it exits).
    Returns the strand row (None once exited)."""
    deadline = time.monotonic() + seconds
    while True:
        row = await strands.row(engine, strand_id)
        if row is None or (until is not None and row.label == until):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"strand still at {row.label} after {seconds} s"
                                 f" (last error: {row.last_error})")
        await strands.execute(engine, "UPDATE strand SET schedule = now() WHERE id = :id",
                              id=strand_id)
        try:
            outcome = await runner.run(strand_id)
        except StrandFailed:
            continue  # recorded on the row (last_error); a test may expect recovery
        if isinstance(outcome, Exit) and until is None:
            return None
        await asyncio.sleep(0.05)


@pytest.fixture
async def world(engine: AsyncEngine, runner: StrandRunner, ssh_host: TestHost
                ) -> AsyncIterator[World]:
    built = await build(engine, runner, ssh_host)
    yield built
    built.close()


@pytest.fixture
async def seeded(engine: AsyncEngine) -> AsyncIterator[World]:
    """A world whose host is never contacted."""
    built = await build(engine)
    yield built
    built.close()
