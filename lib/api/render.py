"""Machine images and versions as the API shows them, read in one query each.

SQL here is composed only from module-level constant fragments; every value is bound.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
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
_VERSION_PAGE = text(f"{_VERSIONS} WHERE v.machine_image_id = :image_id"
                     " ORDER BY v.id LIMIT :size")
_VERSION_COUNT = text("SELECT count(*) FROM machine_image_version WHERE machine_image_id = :id")


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


async def images(connection: AsyncConnection, project_id: uuid.UUID,
                 location_id: uuid.UUID | None, page: Page) -> dict[str, Any]:
    after_id = None
    if page.order_column == "id" and page.start_after is not None:
        if not ubid.is_valid(page.start_after):
            return {"items": [], "count": 0}
        after_id = ubid.to_uuid(page.start_after)
    params = {"project_id": project_id, "location_id": location_id, "size": page.size,
              "after": page.start_after, "after_id": after_id}
    rows = (await connection.execute(_IMAGE_PAGES[page.order_column], params)).all()
    count = (await connection.execute(_IMAGE_COUNT, params)).scalar_one()
    return {"items": [_image(row) for row in rows], "count": count}


async def version(connection: AsyncConnection, version_id: uuid.UUID) -> dict[str, Any]:
    return _version((await connection.execute(_VERSION, {"id": version_id})).one())


async def versions(connection: AsyncConnection, image_id: uuid.UUID) -> dict[str, Any]:
    rows = (await connection.execute(_VERSION_PAGE, {"image_id": image_id, "size": 1000})).all()
    count = (await connection.execute(_VERSION_COUNT, {"id": image_id})).scalar_one()
    return {"items": [_version(row) for row in rows], "count": count}
