"""The object store layer shared by the host agent and the control plane.

Imports nothing from this repository: it is copied to hosts as it is and imported there as
`objects`, and by the control plane as `lib.host.objects`. A store is described by a JSON object:

    {"kind": "directory", "path": "/abs/dir"}
    {"kind": "s3", "endpoint": "http://127.0.0.1:9000", "region": "us-east-1", "bucket": "b",
     "access_key": "...", "secret_key": "..."}

`open_store` turns a description into an obstore store (obstore is imported on first use, so the
agent's other commands run on a bare standard library). The helpers below raise `StoreError`
with one readable line naming the object and never the credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from obstore.store import ObjectStore

STORE_KEYS = {
    "directory": {"kind", "path"},
    "s3": {"kind", "endpoint", "region", "bucket", "access_key", "secret_key"},
}
DELETE_BATCH = 1000


class StoreError(Exception):
    """A store operation failed; str() is one line that names the object."""


class NotFound(StoreError):
    """The object does not exist."""


def check_description(description: object) -> dict[str, str]:
    """The description, checked: a dict of the kind's keys, each a non-empty string.

    Raises ValueError with a message that quotes no value (values may be credentials).
    """
    if not isinstance(description, Mapping):
        raise ValueError("store must be a JSON object")
    kind = description.get("kind")
    if not isinstance(kind, str) or kind not in STORE_KEYS:
        raise ValueError(f"store kind must be one of {sorted(STORE_KEYS)}")
    keys = STORE_KEYS[kind]
    missing, unknown = sorted(keys - description.keys()), sorted(description.keys() - keys)
    if missing or unknown:
        raise ValueError(f"{kind} store: missing keys {missing}, unknown keys {unknown}")
    for key in sorted(keys):
        if not isinstance(description[key], str) or not description[key]:
            raise ValueError(f"{kind} store: {key} must be a non-empty string")
    if kind == "directory" and not description["path"].startswith("/"):
        raise ValueError("directory store: path must be absolute")
    if kind == "s3" and not description["endpoint"].startswith(("http://", "https://")):
        raise ValueError("s3 store: endpoint must be an http:// or https:// URL")
    return dict(description)


def open_store(description: Mapping[str, Any]) -> ObjectStore:
    """An obstore store for a description (see the module docstring); checks it first."""
    from obstore.store import LocalStore, S3Store

    checked = check_description(description)
    if checked["kind"] == "directory":
        return LocalStore(checked["path"], mkdir=True)
    return S3Store(
        checked["bucket"], endpoint=checked["endpoint"], region=checked["region"],
        access_key_id=checked["access_key"], secret_access_key=checked["secret_key"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": checked["endpoint"].startswith("http://")})


def reason(error: BaseException) -> str:
    """One line of an obstore error: its summary, without the debug dump that follows."""
    text = str(error).split("\n\nDebug source:", 1)[0]
    line = " ".join(text.split()) or type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _missing(error: BaseException) -> bool:
    from obstore.exceptions import NotFoundError

    return isinstance(error, (FileNotFoundError, NotFoundError))


def put(store: ObjectStore, path: str, data: bytes | bytearray | memoryview) -> None:
    import obstore

    try:
        obstore.put(store, path, data)
    except Exception as error:
        raise StoreError(f"store put {path} failed: {reason(error)}") from None


def get(store: ObjectStore, path: str) -> memoryview:
    """The object's bytes (a read-only view, no copy); NotFound if there is none."""
    import obstore

    try:
        return memoryview(obstore.get(store, path).bytes())
    except Exception as error:
        if _missing(error):
            raise NotFound(f"store object {path} not found") from None
        raise StoreError(f"store get {path} failed: {reason(error)}") from None


def list_objects(store: ObjectStore, prefix: str) -> dict[str, int]:
    """Path -> size of every object under the prefix (recursively)."""
    import obstore

    try:
        return {meta["path"]: meta["size"]
                for batch in obstore.list(store, prefix, chunk_size=1000) for meta in batch}
    except Exception as error:
        raise StoreError(f"store list {prefix} failed: {reason(error)}") from None


def delete(store: ObjectStore, paths: Iterable[str]) -> None:
    """Delete the objects, in batches, in the order given; objects already gone are fine."""
    import obstore

    batch: list[str] = []
    for path in [*paths, None]:
        if path is not None:
            batch.append(path)
        if batch and (path is None or len(batch) >= DELETE_BATCH):
            try:
                obstore.delete(store, batch)
            except Exception as error:
                if not _missing(error):
                    raise StoreError(f"store delete under {batch[0]} failed: {reason(error)}"
                                     ) from None
                for one in batch:  # some were gone: delete the rest one by one
                    delete_one(store, one)
            batch = []


def delete_one(store: ObjectStore, path: str) -> None:
    import obstore

    try:
        obstore.delete(store, path)
    except Exception as error:
        if not _missing(error):
            raise StoreError(f"store delete {path} failed: {reason(error)}") from None


def delete_prefix(store: ObjectStore, prefix: str, first: str | None = None) -> int:
    """Delete every object under the prefix, `first` (e.g. a commit marker) before the others.

    Returns how many objects were deleted.
    """
    found = list_objects(store, prefix)
    count = len(found)
    if first is not None and found.pop(first, None) is not None:
        delete_one(store, first)
    delete(store, sorted(found))
    return count
