"""The machine-image routes: images, and versions captured from stopped VMs.

Each route authenticates, checks its parameters against the API's description, then calls the
same model functions bin/ctl uses. The API never talks to a host: it writes rows and strands.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lib import config, crypto, ubid
from lib.api import params, render
from lib.api.scope import Scope, scope
from lib.errors import BadRequest, InvalidRequest, ResourceNotFound, ValidationFailed
from model import machine_image, project, vm
from model import machine_image_version as versions

router = APIRouter()
BASE = "/project/{project_id}/location/{location}/machine-image"
NAME_TAKEN = "Machine image with this name already exists in this location"


async def _image(current: Scope, project_id: str, location: str,
                 reference: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The caller's project, and its image named in the path (404 when either is not)."""
    owner = current.project(project_id)
    params.path(reference, params.REFERENCE)
    location_id = await current.location(location)
    return owner, await machine_image.lookup(current.connection, owner, location_id, reference)


async def _name_taken(connection: AsyncConnection, project_id: uuid.UUID,
                      location_id: uuid.UUID, name: str) -> bool:
    return bool((await connection.execute(text(
        "SELECT 1 FROM machine_image WHERE project_id = :project_id"
        " AND location_id = :location_id AND name = :name"),
        {"project_id": project_id, "location_id": location_id, "name": name})).scalar())


def _limits(request: Request) -> versions.Limits:
    """The capture limits of the configuration, read once per app: not on every request."""
    limits: versions.Limits | None = getattr(request.app.state, "limits", None)
    if limits is None:
        settings = config.load()
        limits = request.app.state.limits = versions.Limits(settings.max_capture_gib,
                                                            settings.version_quota)
    return limits


@router.get("/project/{project_id}/machine-image")
async def list_project_images(request: Request, project_id: str) -> dict[str, Any]:
    async with scope(request) as current:
        page = params.page(request.query_params)
        return await render.images(current.connection, current.project(project_id), None, page)


@router.get(BASE)
async def list_location_images(request: Request, project_id: str,
                               location: str) -> dict[str, Any]:
    async with scope(request) as current:
        page = params.page(request.query_params)
        owner = current.project(project_id)
        return await render.images(current.connection, owner,
                                   await current.location(location), page)


@router.post(BASE + "/{reference}")
async def create_image(request: Request, project_id: str, location: str,
                       reference: str) -> dict[str, Any]:
    async with scope(request, "create") as current:
        params.path(reference, params.NEW_NAME)
        body = params.body(await request.body(), {"vm": str, "version": str,
                                                  "destroy_source": bool}, ("vm",))
        owner = current.project(project_id)
        location_id = await current.location(location)
        if await _name_taken(current.connection, owner, location_id, reference):
            raise InvalidRequest(NAME_TAKEN)
        vm_id, arch = await versions.source_vm(current.connection, owner, location_id,
                                               body["vm"])
        # The locks captures take, in their order (VM, then project); the project's makes
        # the name check final.
        await vm.lock(current.connection, vm_id)
        await project.lock(current.connection, owner)
        if await _name_taken(current.connection, owner, location_id, reference):
            raise InvalidRequest(NAME_TAKEN)
        image_id = ubid.generate_from_time(ubid.TYPE_MACHINE_IMAGE)
        current.resource = ubid.to_ubid(image_id)
        await current.connection.execute(text(
            "INSERT INTO machine_image (id, project_id, location_id, name, arch)"
            " VALUES (:id, :project_id, :location_id, :name, :arch)"),
            {"id": image_id, "project_id": owner, "location_id": location_id,
             "name": reference, "arch": arch})
        capture = versions.Capture(owner, location, ubid.to_ubid(image_id), body["vm"],
                                   body.get("version") or None,
                                   body.get("destroy_source", False))
        await versions.assemble(current.connection, capture, _limits(request),
                                master_key=crypto.master_key())
        return await render.image(current.connection, owner, image_id)


@router.get(BASE + "/{reference}")
async def get_image(request: Request, project_id: str, location: str,
                    reference: str) -> dict[str, Any]:
    async with scope(request) as current:
        owner, image_id = await _image(current, project_id, location, reference)
        return await render.image(current.connection, owner, image_id)


@router.patch(BASE + "/{reference}")
async def set_latest(request: Request, project_id: str, location: str,
                     reference: str) -> dict[str, Any]:
    async with scope(request, "update_latest_version") as current:
        body = params.body(await request.body(), {"latest_version": str}, ("latest_version",))
        owner, image_id = await _image(current, project_id, location, reference)
        current.resource = ubid.to_ubid(image_id)
        await machine_image.set_latest(current.connection, image_id, body["latest_version"])
        return await render.image(current.connection, owner, image_id)


@router.post(BASE + "/{reference}/rename")
async def rename_image(request: Request, project_id: str, location: str,
                       reference: str) -> dict[str, Any]:
    async with scope(request, "rename") as current:
        body = params.body(await request.body(), {"name": str}, ("name",))
        owner, image_id = await _image(current, project_id, location, reference)
        current.resource = ubid.to_ubid(image_id)
        new = body["name"]
        old = await render.image(current.connection, owner, image_id)
        if new == old["name"]:
            current.action = None  # no change: nothing to audit, as in the reference
        else:
            try:
                params.path(new, params.NEW_NAME)
            except BadRequest:
                raise ValidationFailed({"name": params.NAME_RULE}) from None
            await project.lock(current.connection, owner)
            location_id = await current.location(location)
            if await _name_taken(current.connection, owner, location_id, new):
                raise InvalidRequest(NAME_TAKEN)
            await current.connection.execute(text(
                "UPDATE machine_image SET name = :name WHERE id = :id"),
                {"name": new, "id": image_id})
        return await render.image(current.connection, owner, image_id)


@router.delete(BASE + "/{reference}", status_code=204)
async def delete_image(request: Request, project_id: str, location: str,
                       reference: str) -> Response:
    async with scope(request, "destroy") as current:
        current.project(project_id)  # another project's path is not found, not "deleted"
        try:
            _, image_id = await _image(current, project_id, location, reference)
        except ResourceNotFound:
            return Response(status_code=204)  # deleting what is not there is done
        current.resource = ubid.to_ubid(image_id)
        await machine_image.lock(current.connection, image_id)
        has_versions = (await current.connection.execute(text(
            "SELECT 1 FROM machine_image_version WHERE machine_image_id = :id LIMIT 1"),
            {"id": image_id})).scalar()
        if has_versions:
            raise InvalidRequest("Machine image still has versions; destroy them first")
        await current.connection.execute(text("DELETE FROM machine_image WHERE id = :id"),
                                         {"id": image_id})
        return Response(status_code=204)


@router.get(BASE + "/{reference}/version")
async def list_versions(request: Request, project_id: str, location: str,
                        reference: str) -> dict[str, Any]:
    async with scope(request) as current:
        page = params.page(request.query_params)
        _, image_id = await _image(current, project_id, location, reference)
        return await render.versions(current.connection, image_id, page)


@router.post(BASE + "/{reference}/version/{version}")
async def create_version(request: Request, project_id: str, location: str, reference: str,
                         version: str) -> dict[str, Any]:
    async with scope(request, "create") as current:
        params.path(reference, params.REFERENCE)
        params.path(version, params.LABEL)
        body = params.body(await request.body(), {"vm": str, "destroy_source": bool}, ("vm",))
        owner = current.project(project_id)
        capture = versions.Capture(owner, location, reference, body["vm"], version,
                                   body.get("destroy_source", False))
        version_id = await versions.assemble(current.connection, capture, _limits(request),
                                             master_key=crypto.master_key())
        current.resource = ubid.to_ubid(version_id)
        return await render.version(current.connection, version_id)


@router.delete(BASE + "/{reference}/version/{version}", status_code=204)
async def delete_version(request: Request, project_id: str, location: str, reference: str,
                         version: str) -> Response:
    async with scope(request, "destroy") as current:
        params.path(version, params.LABEL)
        _, image_id = await _image(current, project_id, location, reference)
        version_id = await versions.request_destroy(current.connection, image_id, version)
        current.resource = ubid.to_ubid(version_id)
        return Response(status_code=204)
