"""Archive stores as the control plane uses them: delete a version's objects a page at a time.

Stores are opened from the same description the host agent gets (`lib/host/objects.py`), so a
directory and an S3 bucket behave alike here. Calls are async: a slow store never blocks the
event loop (and so never trips respirate's watchdog).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import BaseError, NotFoundError

from lib.host.objects import StoreError, open_store, reason

PAGE = 1000

__all__ = ["PAGE", "StoreError", "delete_page"]


async def delete_page(description: Mapping[str, Any], prefix: str) -> int:
    """Delete up to PAGE objects under `prefix`; returns how many. 0 means none are left.

    `prefix` must end in "/": `…/v1/` never matches the objects of `…/v10/`.
    """
    if not prefix.endswith("/") or prefix.startswith("/"):
        raise ValueError(f"a store prefix is relative and ends in '/', not {prefix!r}")
    store = open_store(description)
    paths: list[str] = []
    try:
        try:
            async for batch in obstore.list(store, prefix=prefix, chunk_size=PAGE):
                paths.extend(meta["path"] for meta in batch)
                if len(paths) >= PAGE:
                    break
        except NotFoundError:
            paths = []  # nothing was ever written there
        paths = paths[:PAGE]
        if paths:
            # An object already gone counts as deleted; the caller lists again until empty.
            with contextlib.suppress(NotFoundError):
                await obstore.delete_async(store, paths)
    except BaseError as error:
        raise StoreError(_redact(f"deleting under {prefix}: {reason(error)}", description)
                         ) from None
    if not paths and description["kind"] == "directory":
        _prune(Path(description["path"]), prefix)
    return len(paths)


def _redact(text: str, description: Mapping[str, Any]) -> str:
    """A store's error text, without its credentials (S3 replies may quote the key id)."""
    for key in ("access_key", "secret_key"):
        if description.get(key):
            text = text.replace(description[key], "[redacted]")
    return text


def _prune(root: Path, prefix: str) -> None:
    """Remove the empty directories a directory store leaves under and above `prefix`."""
    top = root / prefix
    if top.is_dir():
        for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
    for parent in top.parents:
        if parent == root or root not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break
