"""bin/ctl commands for projects, stores, VMs, images and their versions.

`version create` starts a capture through the same `assemble` the API uses.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Annotated, Any

import typer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lib import config, crypto, ubid
from lib.ctl import Refused, _in_transaction, app
from model import location as locations
from model import machine_image, machine_image_store, vm
from model import machine_image_version as versions
from model import machine_image_version_metal as metal

project_app = typer.Typer(no_args_is_help=True, help="Projects own VMs, images and stores.")
store_app = typer.Typer(no_args_is_help=True, help="Where archives are kept.")
vm_app = typer.Typer(no_args_is_help=True, help="VMs whose disks are on our hosts.")
image_app = typer.Typer(no_args_is_help=True, help="Machine images.")
version_app = typer.Typer(no_args_is_help=True, help="Versions captured from stopped VMs.")
for sub, name in ((project_app, "project"), (store_app, "store"), (vm_app, "vm"),
                  (image_app, "image"), (version_app, "version")):
    app.add_typer(sub, name=name)

Project = Annotated[str, typer.Option(help="the project's id (pj…)")]
Location = Annotated[str, typer.Option(help="the location's name")]
Json = Annotated[bool, typer.Option("--json")]


def _id(text_id: str, prefix: str, what: str) -> uuid.UUID:
    if not ubid.is_valid(text_id, prefix):
        raise Refused(f"{text_id!r} is not a {what} id ({prefix}…)")
    return ubid.to_uuid(text_id)


def _echo(as_json: bool, fields: dict[str, Any]) -> None:
    typer.echo(json.dumps(fields) if as_json else "  ".join(str(v) for v in fields.values()))


@project_app.command("create")
def project_create(name: str, quota: Annotated[int | None, typer.Option(
        help="most versions the project may hold (default: IMAGECP_VERSION_QUOTA)")] = None,
        as_json: Json = False) -> None:
    async def create(connection: AsyncConnection) -> str:
        project_id = ubid.generate(ubid.TYPE_PROJECT)
        await connection.execute(text(
            "INSERT INTO project (id, name, version_quota) VALUES (:id, :name, :quota)"),
            {"id": project_id, "name": name, "quota": quota})
        return ubid.to_ubid(project_id)

    _echo(as_json, {"id": _in_transaction(create), "name": name})


@store_app.command("add")
def store_add(location: Location,
              project: Annotated[str | None, typer.Option(
                  help="the project's id; without it, the location's default store")] = None,
              directory: Annotated[str | None, typer.Option(help="a directory store")] = None,
              s3_endpoint: Annotated[str | None, typer.Option()] = None,
              s3_region: Annotated[str, typer.Option()] = "us-east-1",
              s3_bucket: Annotated[str | None, typer.Option()] = None,
              as_json: Json = False) -> None:
    """Add a store. S3 keys come from IMAGECP_S3_ACCESS_KEY and IMAGECP_S3_SECRET_KEY."""
    async def add(connection: AsyncConnection) -> str:
        s3 = directory is None
        store_id = await machine_image_store.create(
            connection, location_id=await locations.by_name(connection, location),
            project_id=_id(project, ubid.TYPE_PROJECT, "project") if project else None,
            master_key=crypto.master_key(), kind="s3" if s3 else "directory",
            path=directory, endpoint=s3_endpoint, region=s3_region if s3 else None,
            bucket=s3_bucket, access_key=os.environ.get("IMAGECP_S3_ACCESS_KEY") if s3 else None,
            secret_key=os.environ.get("IMAGECP_S3_SECRET_KEY") if s3 else None)
        return ubid.to_ubid(store_id)

    _echo(as_json, {"id": _in_transaction(add)})


@vm_app.command("add")
def vm_add(name: str, project: Project, location: Location,
           host: Annotated[str, typer.Option(help="the host holding the disk (vh…)")],
           disk: Annotated[str, typer.Option(help="the disk file's path on the host")],
           size: Annotated[int, typer.Option(help="the disk's size in bytes")],
           arch: Annotated[str, typer.Option()] = "x64",
           running: Annotated[bool, typer.Option(help="the VM is running")] = False,
           as_json: Json = False) -> None:
    """Register a VM whose disk file is on a host."""
    async def add(connection: AsyncConnection) -> str:
        vm_id = await vm.create(
            connection, project_id=_id(project, ubid.TYPE_PROJECT, "project"),
            location_id=await locations.by_name(connection, location),
            vm_host_id=_id(host, ubid.TYPE_VM_HOST, "host"), name=name, arch=arch,
            disks=[(disk, size)], state="running" if running else "stopped")
        return ubid.to_ubid(vm_id)

    _echo(as_json, {"id": _in_transaction(add), "name": name})


@image_app.command("create")
def image_create(name: str, project: Project, location: Location,
                 arch: Annotated[str, typer.Option()] = "x64", as_json: Json = False) -> None:
    async def create(connection: AsyncConnection) -> str:
        image_id = ubid.generate_from_time(ubid.TYPE_MACHINE_IMAGE)
        await connection.execute(text(
            "INSERT INTO machine_image (id, project_id, location_id, name, arch)"
            " VALUES (:id, :project_id, :location_id, :name, :arch)"),
            {"id": image_id, "project_id": _id(project, ubid.TYPE_PROJECT, "project"),
             "location_id": await locations.by_name(connection, location), "name": name,
             "arch": arch})
        return ubid.to_ubid(image_id)

    _echo(as_json, {"id": _in_transaction(create), "name": name})


@version_app.command("create")
def version_create(project: Project, location: Location,
                   image: Annotated[str, typer.Option(help="the image's name or id")],
                   vm_id: Annotated[str, typer.Option("--vm", help="the stopped VM (vm…)")],
                   version: Annotated[str | None, typer.Option(
                       help="the label (default: the time, YYYYMMDDhhmmss)")] = None,
                   destroy_source: Annotated[bool, typer.Option(
                       help="destroy the VM once captured")] = False,
                   as_json: Json = False) -> None:
    """Capture a version of IMAGE from a stopped VM (respirate does the work)."""
    settings = config.load()

    async def create(connection: AsyncConnection) -> dict[str, Any]:
        capture = versions.Capture(_id(project, ubid.TYPE_PROJECT, "project"), location, image,
                                   vm_id, version, destroy_source)
        version_id = await versions.assemble(
            connection, capture, versions.Limits(settings.max_capture_gib,
                                                 settings.version_quota),
            master_key=crypto.master_key())
        row = (await connection.execute(text(
            "SELECT version, created_at FROM machine_image_version WHERE id = :id"),
            {"id": version_id})).one()
        return {"id": ubid.to_ubid(version_id), "version": row.version,
                "state": await metal.display_state(connection, version_id),
                "created_at": row.created_at.isoformat(), "actual_size_mib": None,
                "archive_size_mib": None}

    _echo(as_json, _in_transaction(create))


@version_app.command("destroy")
def version_destroy(label: str, project: Project, location: Location,
                    image: Annotated[str, typer.Option(help="the image's name or id")]) -> None:
    """Ask for a version to be destroyed: its objects, then its rows."""
    async def destroy(connection: AsyncConnection) -> None:
        project_id = _id(project, ubid.TYPE_PROJECT, "project")
        image_id = await machine_image.lookup(connection, project_id,
                                              await locations.by_name(connection, location), image)
        await versions.request_destroy(connection, image_id, label)

    _in_transaction(destroy)
