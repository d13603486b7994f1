"""Checking path parameters, query parameters and bodies the way the API's description says,
with the reference's error types and messages (a framework's own 422 never reaches a client)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lib.errors import BadRequest, ValidationFailed

PROJECT = "^pj[0-9a-hj-km-np-tv-z]{24}$"
REFERENCE = "^[a-z0-9](?:[a-z0-9\\-]{0,61}[a-z0-9])?$"
NEW_NAME = "^(?!m1[0-9a-hj-km-np-tv-z]{24}$)[a-z0-9](?:[a-z0-9\\-]{0,61}[a-z0-9])?$"
LABEL = "^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$"
NAME_RULE = ("Name must only contain lowercase letters, numbers, and hyphens and have max"
             " length 63.")
MAX_PAGE = 1000
MAX_BODY = 64 * 1024
ORDER_COLUMNS = ("id", "name")
TYPE_NAMES = {str: "string", bool: "boolean"}


def no_nul(value: str, name: str) -> str:
    """PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database."""
    if "\x00" in value:
        raise BadRequest(f'Parameter "{name}" must not contain NUL characters')
    return value


def path(value: str, pattern: str) -> str:
    # `$` in Python also matches before a final newline; the database's `$` does not.
    if re.search(pattern.removesuffix("$") + r"\Z", value) is None:
        raise BadRequest(f'Parameter "{value}" does not match pattern {pattern}')
    return value


def body(raw: bytes, properties: Mapping[str, type], required: tuple[str, ...]
         ) -> dict[str, Any]:
    """A JSON object with only the declared properties, of their declared types."""
    if len(raw) > MAX_BODY:
        raise BadRequest("Validation failed for following fields: body",
                         {"body": f"Request body is larger than {MAX_BODY} bytes."})
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise BadRequest("Validation failed for following fields: body",
                         {"body": "Request body isn't a valid JSON object."})
    unknown = [key for key in data if key not in properties]
    if unknown:
        raise BadRequest("Validation failed for following fields: body",
                         {"body": "Request body contains unrecognized parameters: "
                                  + ", ".join(unknown)})
    missing = [key for key in required if key not in data]
    if missing:
        raise BadRequest("Validation failed for following fields: body",
                         {"body": "Request body must include required parameters: "
                                  + ", ".join(missing)})
    for key, expected in properties.items():
        if key in data and type(data[key]) is not expected:
            raise BadRequest(f"{json.dumps(data[key])} is not of type"
                             f" '{TYPE_NAMES[expected]}' (parameter {key})")
        if isinstance(data.get(key), str):
            no_nul(data[key], key)
    return data


@dataclass(frozen=True)
class Page:
    start_after: str | None
    size: int
    order_column: str


def page(query: Mapping[str, str]) -> Page:
    """Pagination: `page_size` clamped to 1..1000 (default 1000), ordered by `id` or `name`."""
    raw_size = query.get("page_size")
    try:
        size = MAX_PAGE if raw_size is None else int(raw_size)
    except ValueError:
        raise BadRequest(f'Parameter "page_size" must be an integer, not "{raw_size}"') from None
    order = query.get("order_column", "id")
    if order not in ORDER_COLUMNS:
        raise ValidationFailed({"order_column": "Supported values: id, name"})
    after = query.get("start_after") or None  # empty: from the start, whatever the order
    return Page(after and no_nul(after, "start_after"), min(max(size, 1), MAX_PAGE), order)
