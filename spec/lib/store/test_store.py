"""Deleting a version's objects a page at a time, on a real directory store and real S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib import store
from spec.support import s3


def put(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


async def test_pages_of_a_thousand_until_none_are_left_then_the_directories_go(
        tmp_path: Path) -> None:
    description = {"kind": "directory", "path": str(tmp_path)}
    put(tmp_path, *(f"pj/m1/v1/chunks/{n:016x}" for n in range(store.PAGE + 5)),
        "pj/m1/v1/manifest.json", "pj/m1/v10/manifest.json", "pj/m1/v1.1/manifest.json")
    assert await store.delete_page(description, "pj/m1/v1/") == store.PAGE
    assert await store.delete_page(description, "pj/m1/v1/") == 6
    assert await store.delete_page(description, "pj/m1/v1/") == 0
    assert not (tmp_path / "pj/m1/v1").exists()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "pj/m1/v1.1/manifest.json", "pj/m1/v10/manifest.json"]


async def test_an_emptied_version_takes_its_empty_parents_along(tmp_path: Path) -> None:
    description = {"kind": "directory", "path": str(tmp_path)}
    put(tmp_path, "pj/m1/v1/manifest.json")
    assert await store.delete_page(description, "pj/m1/v1/") == 1
    assert await store.delete_page(description, "pj/m1/v1/") == 0
    assert list(tmp_path.iterdir()) == []
    assert await store.delete_page(description, "never/there/") == 0


@pytest.mark.parametrize("prefix", ["pj/m1/v1", "/pj/m1/v1/"])
async def test_a_prefix_must_be_relative_and_end_in_a_slash(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ValueError, match="ends in '/'"):
        await store.delete_page({"kind": "directory", "path": str(tmp_path)}, prefix)


async def test_an_unreachable_s3_store_raises_a_store_error_without_credentials() -> None:
    description = {"kind": "s3", "endpoint": f"http://127.0.0.1:{s3.free_port()}",
                   "region": s3.REGION, "bucket": "b", "access_key": s3.ACCESS_KEY,
                   "secret_key": s3.SECRET_KEY}
    with pytest.raises(store.StoreError) as raised:
        await store.delete_page(description, "pj/m1/v1/")
    assert str(raised.value).startswith("deleting under pj/m1/v1/: ")
    assert s3.SECRET_KEY not in str(raised.value)


async def test_s3_objects_are_deleted_under_the_prefix_only(s3_server: s3.S3Server) -> None:
    client: object = s3_server.client()
    for key in ("pj/m1/v1/a", "pj/m1/v1/b", "pj/m1/v10/a"):
        client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"x")  # type: ignore[attr-defined]
    assert await store.delete_page(s3_server.store, "pj/m1/v1/") == 2
    assert await store.delete_page(s3_server.store, "pj/m1/v1/") == 0
    listed = client.list_objects_v2(Bucket=s3_server.bucket)  # type: ignore[attr-defined]
    assert [o["Key"] for o in listed["Contents"]] == ["pj/m1/v10/a"]
