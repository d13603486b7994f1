"""Shared fixtures: a throwaway, migrated database on a real PostgreSQL server.

bin/test exports TEST_DATABASE_HOST/PORT (the server on 127.0.0.1:5432, or a private cluster
it started). Each session gets its own database, dropped at the end; each test starts from
empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lib import crypto, db, migrations
from lib.log import configure
from lib.scheduling.runner import StrandRunner

# Secrets at rest in the test databases are sealed with a key made for this run.
os.environ.setdefault("IMAGECP_MASTER_KEY", crypto.generate_master_key())

HOST = os.environ.get("TEST_DATABASE_HOST", "127.0.0.1")
PORT = int(os.environ.get("TEST_DATABASE_PORT", "5432"))
USER = os.environ.get("TEST_DATABASE_USER", "postgres")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"imagecp_test_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(user=USER, host=HOST, port=PORT, dbname=name):
        url = f"postgresql+asyncpg://{USER}@{HOST}:{PORT}/{name}"
        migrations.upgrade(url)
        yield url


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    configure("console", "debug")
    engine = db.create_engine(database_url, pool_size=10, application_name="imagecp-test")
    yield engine
    await engine.dispose()


@pytest.fixture(autouse=True)
async def clean_tables(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    if "engine" in request.fixturenames:
        engine: AsyncEngine = request.getfixturevalue("engine")
        async with engine.begin() as connection:
            await connection.execute(
                text("TRUNCATE strand, semaphore, page, respirate_process, sshable, vm_host,"
                     " location, project, api_token, vm, vm_storage_volume, machine_image_store,"
                     " storage_key_encryption_key, machine_image, machine_image_version,"
                     " machine_image_version_metal CASCADE"))


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        yield connection


@pytest.fixture
def runner(connection: AsyncConnection) -> StrandRunner:
    return StrandRunner(connection, jitter=False)


@pytest.fixture
def logs() -> Iterator[list[Any]]:
    """Structured events logged during the test, each a dict with `event` and its fields."""
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
def ssh_hosts() -> Iterator[Callable[[int], list[Any]]]:
    """Start `count` real sshd hosts (spec/support/sshd.py); all are stopped afterwards.

    Their files live outside pytest's temporary root, which pytest keeps at mode 0700: sshd
    reads authorized_keys as the host's account."""
    import shutil
    import tempfile

    from spec.support.sshd import start_host

    started: list[Any] = []

    def start(count: int = 1) -> list[Any]:
        hosts = [start_host(Path(tempfile.mkdtemp(prefix="imagecp-sshd-")), len(started) + i)
                 for i in range(count)]
        started.extend(hosts)
        return hosts

    yield start
    for host in started:
        host.stop()
        shutil.rmtree(host.directory, ignore_errors=True)


@pytest.fixture
def ssh_host(ssh_hosts: Callable[[int], list[Any]]) -> Any:
    return ssh_hosts(1)[0]


from spec.support.api import api  # noqa: E402, F401
from spec.support.processes import spawn  # noqa: E402, F401  (fixtures)
from spec.support.s3 import s3_server  # noqa: E402, F401  (a fixture: spec/support/s3.py)
from spec.support.world import seeded, world  # noqa: E402, F401
