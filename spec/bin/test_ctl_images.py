"""bin/ctl for captures: the operator's path from a project to a capturing version, through
the same assemble as the API, with its refusals as one line each."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from spec.bin.test_ctl import ctl, refusal
from spec.support import strands


async def test_an_operator_captures_a_version_and_asks_for_its_destruction(
        database_url: str, engine: AsyncEngine) -> None:
    async def run(*args: str, **env: str) -> dict[str, Any]:
        result = await ctl(database_url, *args, "--json", env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    await run("location", "create", "lab")
    project = (await run("project", "create", "acme"))["id"]
    await run("store", "add", "--location", "lab", "--directory", "/srv/images")
    host = (await run("host", "add", "--location", "lab", "--address", "10.0.0.9",
                      "--accept-new"))["id"]
    vm = (await run("vm", "add", "src", "--project", project, "--location", "lab",
                    "--host", host, "--disk", "/var/vms/src.raw", "--size", "1048576"))["id"]
    await run("image", "create", "base", "--project", project, "--location", "lab")
    created = await run("version", "create", "--project", project, "--location", "lab",
                        "--image", "base", "--vm", vm, "--version", "v1.0")
    assert (created["version"], created["state"], created["actual_size_mib"]) == (
        "v1.0", "creating", None)
    assert created["id"].startswith("mv")
    assert await strands.scalar(engine, "SELECT label FROM strand WHERE prog ="
                                " 'MachineImage.VersionNexus'") == "archive"

    again = await ctl(database_url, "version", "create", "--project", project, "--location",
                      "lab", "--image", "base", "--vm", vm, "--version", "v2")
    assert refusal(again) == ("ctl: Another machine image version is already being captured"
                              " from this source VM")
    nowhere = await ctl(database_url, "version", "create", "--project", project, "--location",
                        "moon", "--image", "base", "--vm", vm)
    assert refusal(nowhere) == ("ctl: Validation failed for following path components:"
                                " location; location: Given location is not a valid location."
                                " Available locations: lab")
    assert await strands.scalar(engine, "SELECT count(*) FROM machine_image_version") == 1

    destroyed = await ctl(database_url, "version", "destroy", "v1.0", "--project", project,
                          "--location", "lab", "--image", "base")
    assert destroyed.returncode == 0, destroyed.stderr
    assert await strands.scalar(engine, "SELECT count(*) FROM semaphore WHERE name ="
                                " 'destroy'") == 1


async def test_s3_store_keys_come_from_the_environment_and_are_sealed(
        database_url: str, engine: AsyncEngine) -> None:
    await ctl(database_url, "location", "create", "lab")
    added = await ctl(database_url, "store", "add", "--location", "lab", "--s3-endpoint",
                      "http://127.0.0.1:9000", "--s3-bucket", "images",
                      env={"IMAGECP_S3_ACCESS_KEY": "AKIDEXAMPLE",
                           "IMAGECP_S3_SECRET_KEY": "very-secret-key"})
    assert added.returncode == 0, added.stderr
    sealed = await strands.scalar(engine, "SELECT secret_key_sealed FROM machine_image_store")
    assert b"very-secret-key" not in sealed
    missing = await ctl(database_url, "store", "add", "--location", "lab", "--s3-endpoint",
                        "http://127.0.0.1:9000", "--s3-bucket", "images")
    assert refusal(missing).startswith("ctl: an s3 store needs")
