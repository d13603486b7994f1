"""Stores: what a store must say, its credentials sealed at rest, and how hosts are told."""

from __future__ import annotations

from typing import Any

import pytest

from lib import crypto
from model import machine_image_store
from spec.support import strands
from spec.support.world import World


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "directory", "path": "relative/dir"}, "a directory store needs an absolute path"),
    ({"kind": "s3", "endpoint": "http://s3", "bucket": "b"}, "an s3 store needs"),
    ({"kind": "ftp"}, "a store is one of directory, s3, not 'ftp'"),
])
async def test_an_incomplete_store_is_refused(seeded: World, fields: dict[str, Any],
                                              message: str) -> None:
    before = await strands.scalar(seeded.engine, "SELECT count(*) FROM machine_image_store")
    async with seeded.engine.begin() as connection:
        with pytest.raises(machine_image_store.StoreRefused, match=message):
            await machine_image_store.create(connection, location_id=seeded.location_id,
                                             project_id=seeded.project_id,
                                             master_key=crypto.master_key(), **fields)
    assert await strands.scalar(seeded.engine,
                                "SELECT count(*) FROM machine_image_store") == before


async def test_s3_credentials_are_sealed_and_opened_only_for_the_host(seeded: World) -> None:
    async with seeded.engine.begin() as connection:
        store_id = await machine_image_store.create(
            connection, location_id=seeded.location_id, project_id=seeded.project_id,
            kind="s3", endpoint="https://s3.example", region="eu", bucket="images",
            access_key="AKID", secret_key="s3cr3t-value", master_key=crypto.master_key())
        described = await machine_image_store.description(connection, store_id,
                                                          crypto.master_key())
    assert described == {"kind": "s3", "endpoint": "https://s3.example", "region": "eu",
                         "bucket": "images", "access_key": "AKID",
                         "secret_key": "s3cr3t-value"}
    row = await strands.scalar(seeded.engine, "SELECT secret_key_sealed FROM"
                               " machine_image_store WHERE id = :id", id=store_id)
    assert b"s3cr3t-value" not in row
    # Sealed for its own row and column: the access key's ciphertext does not open as the
    # secret key.
    await strands.execute(seeded.engine, "UPDATE machine_image_store SET secret_key_sealed ="
                          " access_key_sealed WHERE id = :id", id=store_id)
    async with seeded.engine.connect() as connection:
        with pytest.raises(crypto.SecretError):
            await machine_image_store.description(connection, store_id, crypto.master_key())
