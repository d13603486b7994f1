"""The API's description, served at /openapi.json: the reference's machine-image operations,
their parameters' patterns and their bodies, as this implementation serves them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lib.api import params

JSON = "application/json"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _path_param(name: str, pattern: str | None = None, about: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": about,
            "schema": schema}


def _query(name: str, kind: str, about: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": about,
            "schema": {"type": kind}}


def _body(properties: dict[str, str], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": {
        "type": "object", "additionalProperties": False, "required": required,
        "properties": {name: {"type": kind} for name, kind in properties.items()}}}}}


def _operation(operation_id: str, summary: str, ok: str, *, parameters: Sequence[Any] = (),
               body: dict[str, Any] | None = None) -> dict[str, Any]:
    status = "204" if ok == "Delete" else "200"
    operation: dict[str, Any] = {
        "operationId": operation_id, "summary": summary, "tags": ["Machine Image"],
        "parameters": list(parameters),
        "responses": {status: _ref("responses", ok), "default": _ref("responses", "Error")}}
    if body is not None:
        operation["requestBody"] = body
    return operation


PROJECT = _ref("parameters", "project_id")
LOCATION = _ref("parameters", "location")
REFERENCE = _ref("parameters", "machine_image_reference")
PAGING = [_ref("parameters", name) for name in ("start_after", "page_size", "order_column")]
BASE = "/project/{project_id}/location/{location}/machine-image"

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "imagecp API", "version": "0.1.0",
             "description": "Machine images captured from stopped VMs."},
    "security": [{"BearerAuth": []}],
    "paths": {
        "/project/{project_id}/machine-image": {"get": _operation(
            "listProjectMachineImages", "Machine images of a project", "MachineImages",
            parameters=[PROJECT, *PAGING])},
        BASE: {"get": _operation(
            "listLocationMachineImages", "Machine images of a project in a location",
            "MachineImages", parameters=[LOCATION, PROJECT, *PAGING])},
        BASE + "/{machine_image_reference}": {
            "parameters": [PROJECT, LOCATION],
            "post": _operation(
                "createMachineImage", "Create a machine image and its first version from a"
                " stopped VM", "MachineImage", parameters=[_ref("parameters", "new_name")],
                body=_body({"vm": "string", "version": "string", "destroy_source": "boolean"},
                           ["vm"])),
            "get": _operation("getMachineImage", "A machine image", "MachineImage",
                              parameters=[REFERENCE]),
            "patch": _operation("updateMachineImage", "Choose the latest version",
                                "MachineImage", parameters=[REFERENCE],
                                body=_body({"latest_version": "string"}, ["latest_version"])),
            "delete": _operation("deleteMachineImage", "Delete a machine image without"
                                 " versions", "Delete", parameters=[REFERENCE]),
        },
        BASE + "/{machine_image_reference}/rename": {
            "parameters": [PROJECT, LOCATION, REFERENCE],
            "post": _operation("renameMachineImage", "Rename a machine image", "MachineImage",
                               body=_body({"name": "string"}, ["name"])),
        },
        BASE + "/{machine_image_reference}/version": {
            # The reference pages version lists but does not say so; this description does.
            "parameters": [PROJECT, LOCATION, REFERENCE, *PAGING],
            "get": _operation("listMachineImageVersions", "Versions of a machine image",
                              "MachineImageVersions"),
        },
        BASE + "/{machine_image_reference}/version/{version}": {
            "parameters": [PROJECT, LOCATION, REFERENCE, _ref("parameters", "version")],
            "post": _operation("createMachineImageVersion", "Capture a version from a stopped"
                               " VM", "MachineImageVersion",
                               body=_body({"vm": "string", "destroy_source": "boolean"},
                                          ["vm"])),
            "delete": _operation("deleteMachineImageVersion", "Destroy a version", "Delete"),
        },
    },
    "components": {
        "parameters": {
            "project_id": _path_param("project_id", params.PROJECT, "the project's id"),
            "location": _path_param("location", None, "a location's name"),
            "machine_image_reference": _path_param(
                "machine_image_reference", params.REFERENCE, "a machine image's id or name"),
            "new_name": _path_param("machine_image_reference", params.NEW_NAME,
                                    "the new machine image's name (not shaped like an id)"),
            "version": _path_param("version", params.LABEL, "a version label"),
            "start_after": _query("start_after", "string", "the last id (or name) seen"),
            "page_size": _query("page_size", "integer", "items per page, 1 to 1000"),
            "order_column": {**_query("order_column", "string", "id (default) or name"),
                             "schema": {"type": "string", "enum": list(params.ORDER_COLUMNS)}},
        },
        "schemas": {
            "Error": {"type": "object", "additionalProperties": False, "required": ["error"],
                      "properties": {"error": {
                          "type": "object", "additionalProperties": False,
                          "required": ["code", "message", "type"],
                          "properties": {"code": {"type": "integer"},
                                         "message": {"type": "string"},
                                         "type": {"type": "string"},
                                         "details": {"type": "object", "nullable": True}}}}},
            "MachineImage": {
                "type": "object", "additionalProperties": False,
                "required": ["id", "name", "location", "arch", "created_at"],
                "properties": {
                    "id": {"type": "string", "pattern": "^m1[0-9a-hj-km-np-tv-z]{24}$"},
                    "name": {"type": "string"}, "location": {"type": "string"},
                    "arch": {"type": "string", "enum": ["x64", "arm64"]},
                    "latest_version": {"type": "string", "nullable": True},
                    "created_at": {"type": "string", "format": "date-time"}}},
            "MachineImageVersion": {
                "type": "object", "additionalProperties": False,
                "required": ["id", "version", "state", "created_at", "latest"],
                "properties": {
                    "id": {"type": "string"}, "version": {"type": "string"},
                    "state": {"type": "string", "nullable": True,
                              "enum": ["creating", "ready", "destroying", "failed"]},
                    "actual_size_mib": {"type": "integer", "nullable": True},
                    "archive_size_mib": {"type": "integer", "nullable": True},
                    "created_at": {"type": "string", "format": "date-time"},
                    "latest": {"type": "boolean"}}},
        },
        "responses": {
            "Delete": {"description": "Deleted, or requested to be"},
            "Error": {"description": "An error",
                      "content": {JSON: {"schema": _ref("schemas", "Error")}}},
            "MachineImage": {"description": "A machine image", "content": {
                JSON: {"schema": _ref("schemas", "MachineImage")}}},
            "MachineImageVersion": {"description": "A version", "content": {
                JSON: {"schema": _ref("schemas", "MachineImageVersion")}}},
            **{name: {"description": f"A page of {item}s", "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False, "required": ["count", "items"],
                "properties": {"count": {"type": "integer"}, "items": {
                    "type": "array", "items": _ref("schemas", schema)}}}}}}
               for name, schema, item in (("MachineImages", "MachineImage", "machine image"),
                                          ("MachineImageVersions", "MachineImageVersion",
                                           "version"))},
        },
        "securitySchemes": {"BearerAuth": {"type": "http", "scheme": "bearer"}},
    },
}
