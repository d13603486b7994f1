"""Machine images and versions as the API shows them, read in one query each.

SQL here is composed only from module-level constant fragments; every value is bound.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from lib import ubid
from lib.api.params import Page
from model.machine_image_version_metal import STATE_OF_M

_IMAGES = (
    "SELECT i.id, i.name, l.name AS location, i.arch, v.version AS latest_version,"
    " i.created_at FROM machine_image i JOIN location l ON l.id = i.location_id"
    " LEFT JOIN machine_image_version v ON v.id = i.latest_version_id"
    " WHERE i.project_id = :project_id AND (CAST(:location_id AS uuid) IS NULL"
    " OR i.location_id = :location_id)")
_IMAGE = text(f"{_IMAGES} AND i.id = :id")
_IMAGE_COUNT = text(
    "SELECT count(*) FROM machine_image i WHERE i.project_id = :project_id"
    " AND (CAST(:location_id AS uuid) IS NULL OR i.location_id = :location_id)")
_IMAGE_PAGES = {
    "id": text(f"{_IMAGES} AND (CAST(:after_id AS uuid) IS NULL OR i.id > :after_id)"
               " ORDER BY i.id LIMIT :size"),
    "name": text(f"{_IMAGES} AND (CAST(:after AS text) IS NULL OR i.name > :after)"
                 " ORDER BY i.name LIMIT :size"),
}
_VERSIONS = (
    f"SELECT v.id, v.version, {STATE_OF_M} AS state, v.actual_size_mib, m.archive_size_mib,"
    " v.created_at, i.latest_version_id IS NOT DISTINCT FROM v.id AS latest"
    " FROM machine_image_version v JOIN machine_image i ON i.id = v.machine_image_id"
    " LEFT JOIN machine_image_version_metal m ON m.id = v.id")
_VERSION = text(f"{_VERSIONS} WHERE v.id = :id")
_VERSION_PAGES = {
    "id": text(f"{_VERSIONS} WHERE v.machine_image_id = :image_id AND"
               " (CAST(:after_id AS uuid) IS NULL OR v.id > :after_id) ORDER BY v.id LIMIT :size"),
    "name": text(f"{_VERSIONS} WHERE v.machine_image_id = :image_id AND"
                 " (CAST(:after AS text) IS NULL OR v.version > :after)"
                 " ORDER BY v.version LIMIT :size"),
}
_VERSION_COUNT = text("SELECT count(*) FROM machine_image_version"
                      " WHERE machine_image_id = :image_id")


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _image(row: Any) -> dict[str, Any]:
    return {"id": ubid.to_ubid(row.id), "name": row.name, "location": row.location,
            "arch": row.arch, "latest_version": row.latest_version,
            "created_at": timestamp(row.created_at)}


def _version(row: Any) -> dict[str, Any]:
    return {"id": ubid.to_ubid(row.id), "version": row.version, "state": row.state,
            "actual_size_mib": row.actual_size_mib, "archive_size_mib": row.archive_size_mib,
            "created_at": timestamp(row.created_at), "latest": bool(row.latest)}


async def image(connection: AsyncConnection, project_id: uuid.UUID,
                image_id: uuid.UUID) -> dict[str, Any]:
    row = (await connection.execute(_IMAGE, {"project_id": project_id, "location_id": None,
                                             "id": image_id})).one()
    return _image(row)


def _page_params(page: Page) -> dict[str, Any] | None:
    """The bound values of a page's query; None when `start_after` cannot name an id, so
    that the page is empty (its count is still the total: counts ignore paging)."""
    after_id = None
    if page.order_column == "id" and page.start_after is not None:
        if not ubid.is_valid(page.start_after):
            return None
        after_id = ubid.to_uuid(page.start_after)
    return {"size": page.size, "after": page.start_after, "after_id": after_id}


async def _list(connection: AsyncConnection, pages: Mapping[str, TextClause], count: TextClause,
                page: Page, params: dict[str, Any],
                item: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    paging = _page_params(page)
    rows = [] if paging is None else (
        await connection.execute(pages[page.order_column], {**params, **paging})).all()
    total = (await connection.execute(count, params)).scalar_one()
    return {"items": [item(row) for row in rows], "count": total}


async def images(connection: AsyncConnection, project_id: uuid.UUID,
                 location_id: uuid.UUID | None, page: Page) -> dict[str, Any]:
    return await _list(connection, _IMAGE_PAGES, _IMAGE_COUNT, page,
                       {"project_id": project_id, "location_id": location_id}, _image)


async def version(connection: AsyncConnection, version_id: uuid.UUID) -> dict[str, Any]:
    return _version((await connection.execute(_VERSION, {"id": version_id})).one())


async def versions(connection: AsyncConnection, image_id: uuid.UUID,
                   page: Page) -> dict[str, Any]:
    """Ordered by id (creation) or, with `order_column=name`, by label."""
    return await _list(connection, _VERSION_PAGES, _VERSION_COUNT, page,
                       {"image_id": image_id}, _version)
