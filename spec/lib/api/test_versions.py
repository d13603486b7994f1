"""Machine images and versions through the API: what each call returns and changes, and every
refusal of the reference (§4), each leaving the database as it was."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import asyncssh
import pytest

from lib import ubid
from spec.support import strands
from spec.support.api import Api


async def count(api: Api, table: str) -> int:
    return int(await strands.scalar(api.world.engine, f"SELECT count(*) FROM {table}"))


async def capture(api: Api, label: str, vm: str | None = None, **body: Any) -> Any:
    if vm is None:
        vm_id, _, _ = await api.world.vm(f"src-{uuid.uuid4().hex[:8]}")
        vm = ubid.to_ubid(vm_id)
    return await api.post(f"{api.base}/base/version/{label}", {"vm": vm, **body})


async def make_ready(api: Api, version_id: str) -> None:
    await strands.execute(api.world.engine, "UPDATE machine_image_version_metal SET status ="
                          " 'ready', archive_size_mib = 3, pinned_source_vm_id = NULL"
                          " WHERE id = :id", id=ubid.to_uuid(version_id))


def refused(response: Any, message: str, kind: str = "InvalidRequest") -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == kind
    assert response.json()["error"]["message"] == message


async def test_the_seeds_post_creates_a_capturing_version(api: Api) -> None:
    vm_id, _, _ = await api.world.vm("src")
    response = await api.post(f"{api.base}/base/version/v1.0",
                              {"vm": ubid.to_ubid(vm_id), "destroy_source": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "version", "state", "created_at", "actual_size_mib",
                         "archive_size_mib", "latest"}
    assert (body["version"], body["state"], body["actual_size_mib"], body["archive_size_mib"],
            body["latest"]) == ("v1.0", "creating", None, None, False)
    assert re.fullmatch(r"mv[0-9a-z]{24}", body["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["created_at"])
    strand = await strands.row(api.world.engine, ubid.to_uuid(body["id"]))
    assert (strand.prog, strand.label) == ("MachineImage.VersionNexus", "archive")
    assert strand.stack[0] == {"source_vm_id": ubid.to_ubid(vm_id),
                               "vm_host_id": ubid.to_ubid(api.world.host_id),
                               "destroy_source_after": True, "set_as_latest": True,
                               "latest_choices_at_start": 0}


async def test_version_refusals_change_nothing(api: Api) -> None:
    await capture(api, "v1")
    arm, _, _ = await api.world.vm("arm", arch="arm64")
    spare = ubid.to_ubid((await api.world.vm("spare"))[0])
    tables = ("machine_image_version", "machine_image_version_metal", "strand",
              "storage_key_encryption_key", "semaphore")
    before = {t: await count(api, t) for t in tables}
    refused(await capture(api, "v1", vm=spare),
            "Version v1 already exists for this machine image")
    refused(await capture(api, "v2", vm="nonsense"),
            "Value provided not a valid id for parameter vm")
    refused(await capture(api, "v2", vm=ubid.to_ubid(ubid.generate(ubid.TYPE_VM))),
            "Source VM not found")
    refused(await capture(api, "v2", vm=ubid.to_ubid(arm)),
            "Source VM arch (arm64) does not match machine image arch (x64)")
    await strands.execute(api.world.engine, "UPDATE project SET version_quota = 1")
    over = await capture(api, "v2", vm=spare)
    refused(over, "Validation failed for following fields: version")
    assert over.json()["error"]["details"] == {
        "version": "Insufficient quota for machine image versions. Requested: 2,"
                   " maximum allowed: 1"}
    await strands.execute(api.world.engine, "UPDATE project SET version_quota = NULL")
    far = ubid.generate(ubid.TYPE_LOCATION)  # the store moves elsewhere: none here now
    await strands.execute(api.world.engine, "INSERT INTO location (id, name) VALUES"
                          " (:id, 'far')", id=far)
    await strands.execute(api.world.engine, "UPDATE machine_image_store SET location_id = :l",
                          l=far)
    refused(await capture(api, "v3", vm=spare),
            "No machine image store configured for this location")
    assert {t: await count(api, t) for t in tables} == before


async def test_concurrent_posts_of_one_label_create_exactly_one_version(api: Api) -> None:
    vms = [ubid.to_ubid((await api.world.vm(f"src{n}"))[0]) for n in range(8)]
    responses = await asyncio.gather(*(capture(api, "v1", vm=vm) for vm in vms))
    assert sorted(r.status_code for r in responses) == [200] + [400] * 7
    for response in responses:
        if response.status_code == 400:
            refused(response, "Version v1 already exists for this machine image")
    assert await strands.scalar(api.world.engine, "SELECT count(*) FROM strand WHERE prog ="
                                " 'MachineImage.VersionNexus'") == 1


async def test_images_are_listed_got_by_name_or_id_and_show_their_latest(api: Api) -> None:
    first = (await capture(api, "v1")).json()
    await make_ready(api, first["id"])
    assert (await api.patch(f"{api.base}/base", {"latest_version": "v1"})).status_code == 200
    listed = (await api.get(api.base)).json()
    assert listed["count"] == 1 and [i["name"] for i in listed["items"]] == ["base"]
    image_id = listed["items"][0]["id"]
    by_name, by_id = (await api.get(f"{api.base}/base")).json(), (
        await api.get(f"{api.base}/{image_id}")).json()
    assert by_name == by_id
    assert by_name == {"id": image_id, "name": "base", "location": "lab", "arch": "x64",
                       "latest_version": "v1", "created_at": by_name["created_at"]}
    project = (await api.get(f"/project/{ubid.to_ubid(api.world.project_id)}/machine-image"))
    assert project.json()["count"] == 1
    named = await api.get(api.base, params={"order_column": "name", "page_size": 0})
    assert named.json()["count"] == 1 and len(named.json()["items"]) == 1


async def test_versions_list_shows_state_latest_and_bare_versions(api: Api) -> None:
    first = (await capture(api, "v1")).json()
    await capture(api, "v2")
    await make_ready(api, first["id"])
    await api.patch(f"{api.base}/base", {"latest_version": "v1"})
    await strands.execute(api.world.engine, "INSERT INTO machine_image_version (id,"
                          " machine_image_id, version) VALUES (:id, :image, 'bare')",
                          id=ubid.generate_from_time(ubid.TYPE_MACHINE_IMAGE_VERSION),
                          image=api.world.image_id)
    listed = (await api.get(f"{api.base}/base/version")).json()
    assert listed["count"] == 3
    shown = {v["version"]: (v["state"], v["archive_size_mib"], v["latest"])
             for v in listed["items"]}
    assert shown == {"v1": ("ready", 3, True), "v2": ("creating", None, False),
                     "bare": (None, None, False)}


async def test_latest_may_only_be_set_to_a_ready_version(api: Api) -> None:
    await capture(api, "v1")
    refused(await api.patch(f"{api.base}/base", {"latest_version": "missing"}),
            "Version missing not found")
    refused(await api.patch(f"{api.base}/base", {"latest_version": "v1"}),
            "Version v1 is not ready")
    response = await api.patch(f"{api.base}/base", {"latest_version": None})
    assert response.status_code == 400 and response.json()["error"]["type"] == "BadRequest"
    response = await api.patch(f"{api.base}/base", {})
    assert response.json()["error"]["details"] == {
        "body": "Request body must include required parameters: latest_version"}


async def test_creating_an_image_captures_its_first_version(api: Api) -> None:
    vm_id, _, _ = await api.world.vm("src")
    response = await api.post(f"{api.base}/fresh", {"vm": ubid.to_ubid(vm_id)})
    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["latest_version"]) == ("fresh", None)
    versions = (await api.get(f"{api.base}/fresh/version")).json()["items"]
    assert len(versions) == 1 and re.fullmatch(r"\d{14}", versions[0]["version"])
    refused(await api.post(f"{api.base}/fresh", {"vm": ubid.to_ubid(vm_id)}),
            "Machine image with this name already exists in this location")


async def test_an_image_create_refused_by_the_quota_leaves_no_image(api: Api) -> None:
    await strands.execute(api.world.engine, "UPDATE project SET version_quota = 0")
    vm_id, _, _ = await api.world.vm("src")
    response = await api.post(f"{api.base}/fresh", {"vm": ubid.to_ubid(vm_id),
                                                    "version": "v1"})
    refused(response, "Validation failed for following fields: version")
    assert await count(api, "machine_image") == 1  # only the seeded one


async def test_rename(api: Api) -> None:
    await api.post(f"{api.base}/other", {"vm": ubid.to_ubid((await api.world.vm("s"))[0])})
    assert (await api.post(f"{api.base}/base/rename", {"name": "base"})).status_code == 200
    bad = await api.post(f"{api.base}/base/rename", {"name": "Not OK"})
    assert bad.json()["error"]["details"] == {
        "name": "Name must only contain lowercase letters, numbers, and hyphens and have max"
                " length 63."}
    refused(await api.post(f"{api.base}/base/rename", {"name": "other"}),
            "Machine image with this name already exists in this location")
    renamed = await api.post(f"{api.base}/base/rename", {"name": "gold"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "gold"
    assert (await api.get(f"{api.base}/gold")).status_code == 200


async def test_deleting_images(api: Api) -> None:
    await capture(api, "v1")
    refused(await api.delete(f"{api.base}/base"),
            "Machine image still has versions; destroy them first")
    assert (await api.delete(f"{api.base}/gone")).status_code == 204
    await strands.execute(api.world.engine, "INSERT INTO machine_image (id, project_id,"
                          " location_id, name, arch) VALUES (:id, :p, :l, 'spare', 'x64')",
                          id=ubid.generate(ubid.TYPE_MACHINE_IMAGE), p=api.world.project_id,
                          l=api.world.location_id)
    deleted = await api.delete(f"{api.base}/spare")
    assert deleted.status_code == 204 and deleted.content == b""
    assert (await api.get(f"{api.base}/spare")).status_code == 404


async def test_deleting_versions(api: Api) -> None:
    version_id = ubid.to_uuid((await capture(api, "v1")).json()["id"])
    for _ in range(2):  # idempotent
        assert (await api.delete(f"{api.base}/base/version/v1")).status_code == 204
    assert await strands.scalar(api.world.engine, "SELECT count(*) FROM semaphore WHERE"
                                " strand_id = :id AND name = 'destroy'", id=version_id) == 2
    listed = (await api.get(f"{api.base}/base/version")).json()["items"]
    assert listed[0]["state"] == "destroying"
    missing = await api.delete(f"{api.base}/base/version/v9")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Machine image version not found"
    await strands.execute(api.world.engine, "INSERT INTO machine_image_version (id,"
                          " machine_image_id, version) VALUES (:id, :image, 'bare')",
                          id=ubid.generate(ubid.TYPE_MACHINE_IMAGE_VERSION),
                          image=api.world.image_id)
    refused(await api.delete(f"{api.base}/base/version/bare"),
            "Version has no metal record to destroy")
    assert (await api.delete(f"{api.base}/nothing/version/v1")).status_code == 404


@pytest.fixture
def dialled(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every SSH connection attempted meanwhile (asyncssh.connect is how lib.ssh dials)."""
    attempts: list[Any] = []

    async def connect(*args: Any, **options: Any) -> None:
        attempts.append(args)
        raise AssertionError("the API opened an SSH connection")

    monkeypatch.setattr(asyncssh, "connect", connect)
    return attempts


async def test_changes_are_audited_and_no_ssh_happens(api: Api, logs: list[Any],
                                                     dialled: list[Any]) -> None:
    created = (await capture(api, "v1")).json()
    await capture(api, "v1")
    audits = [e for e in logs if e["event"] == "audit"]
    assert [(e["action"], e["resource"], e["outcome"]) for e in audits][-2:] == [
        ("create", created["id"], "ok"), ("create", f"{api.base}/base/version/v1".split("?")[0],
                                          "InvalidRequest")]
    assert all(e["project"] == ubid.to_ubid(api.world.project_id) and
               e["token"] == ubid.to_ubid(api.token_id) for e in audits)
    assert not any(e["event"].startswith("ssh") for e in logs) and dialled == []
    await api.get(api.base)
    assert len([e for e in logs if e["event"] == "audit"]) == len(audits)  # reads are not


async def test_versions_are_paged_by_id_or_label_and_counted_whole(api: Api) -> None:
    made = [(await capture(api, label)).json() for label in ("v3", "v1", "v2")]
    path = f"{api.base}/base/version"

    async def page(**query: Any) -> tuple[list[str], int]:
        listed = (await api.get(path, params=query)).json()
        return [v["version"] for v in listed["items"]], listed["count"]

    assert await page() == (["v3", "v1", "v2"], 3)  # by id: the order they were made
    assert await page(page_size=2) == (["v3", "v1"], 3)
    assert await page(page_size=2, start_after=made[1]["id"]) == (["v2"], 3)
    assert await page(order_column="name") == (["v1", "v2", "v3"], 3)
    assert await page(order_column="name", start_after="v1", page_size=1) == (["v2"], 3)
    assert await page(start_after="not-an-id") == ([], 3)  # nothing after it; still the total
    assert await page(start_after="") == (["v3", "v1", "v2"], 3)  # empty: from the start
    assert await page(start_after="", order_column="name") == (["v1", "v2", "v3"], 3)
    assert await page(page_size=0) == (["v3"], 3)  # clamped to 1..1000
    assert await page(page_size=5000) == (["v3", "v1", "v2"], 3)


async def test_images_are_paged_and_counted_whole(api: Api) -> None:
    for name in ("zeta", "alpha"):
        assert (await api.post(f"{api.base}/{name}", {"vm": ubid.to_ubid(
            (await api.world.vm(f"src-{name}"))[0])})).status_code == 200

    async def page(**query: Any) -> tuple[list[str], int]:
        listed = (await api.get(api.base, params=query)).json()
        return [i["name"] for i in listed["items"]], listed["count"]

    assert await page() == (["base", "zeta", "alpha"], 3)
    first = (await api.get(api.base, params={"page_size": 1})).json()["items"][0]["id"]
    assert await page(start_after=first, page_size=1) == (["zeta"], 3)
    assert await page(order_column="name", start_after="base") == (["zeta"], 3)
    assert await page(start_after="zzz") == ([], 3)


async def test_latest_cannot_be_a_version_being_destroyed_or_without_metal(api: Api) -> None:
    ready_id = (await capture(api, "v1")).json()["id"]
    await make_ready(api, ready_id)
    assert (await api.delete(f"{api.base}/base/version/v1")).status_code == 204
    refused(await api.patch(f"{api.base}/base", {"latest_version": "v1"}),
            "Version v1 is not ready")  # a destroy is pending: it is no longer ready
    await strands.execute(api.world.engine, "INSERT INTO machine_image_version (id,"
                          " machine_image_id, version) VALUES (:id, :image, 'bare')",
                          id=ubid.generate_from_time(ubid.TYPE_MACHINE_IMAGE_VERSION),
                          image=api.world.image_id)
    refused(await api.patch(f"{api.base}/base", {"latest_version": "bare"}),
            "Version bare is not ready")
    assert await strands.scalar(api.world.engine, "SELECT latest_version_id FROM"
                                " machine_image WHERE id = :id", id=api.world.image_id) is None


async def test_image_create_refusals_change_nothing(api: Api) -> None:
    spare = ubid.to_ubid((await api.world.vm("spare"))[0])
    tables = ("machine_image", "machine_image_version", "strand", "semaphore")
    before = {t: await count(api, t) for t in tables}
    refused(await api.post(f"{api.base}/fresh", {"vm": ubid.to_ubid(
        ubid.generate(ubid.TYPE_VM))}), "Source VM not found")
    refused(await api.post(f"{api.base}/fresh", {"vm": spare, "version": "-bad"}),
            "version must start with a letter or number and may contain ASCII letters,"
            " numbers, dot, hyphen, and underscore (max 64 characters).")
    refused(await api.post(f"{api.base}/fresh", {"vm": "nonsense"}),
            "Value provided not a valid id for parameter vm")
    far = ubid.generate(ubid.TYPE_LOCATION)
    await strands.execute(api.world.engine, "INSERT INTO location (id, name) VALUES"
                          " (:id, 'far')", id=far)
    await strands.execute(api.world.engine, "UPDATE machine_image_store SET location_id = :l",
                          l=far)
    refused(await api.post(f"{api.base}/fresh", {"vm": spare}),
            "No machine image store configured for this location")
    assert {t: await count(api, t) for t in tables} == before


async def test_every_change_is_audited_with_its_resource_and_outcome(
        api: Api, logs: list[Any], dialled: list[Any]) -> None:
    vm = ubid.to_ubid((await api.world.vm("src"))[0])
    image = (await api.post(f"{api.base}/fresh", {"vm": vm, "version": "v1"})).json()["id"]
    version = (await api.get(f"{api.base}/fresh/version")).json()["items"][0]["id"]
    await make_ready(api, version)
    await api.patch(f"{api.base}/fresh", {"latest_version": "v1"})
    await api.post(f"{api.base}/fresh/rename", {"name": "fresh"})  # no change: not audited
    await api.post(f"{api.base}/fresh/rename", {"name": "gold"})
    await api.delete(f"{api.base}/gold")  # refused: it still has a version
    await api.delete(f"{api.base}/gold/version/v1")
    await strands.execute(api.world.engine, "DELETE FROM machine_image_version_metal")
    await strands.execute(api.world.engine, "UPDATE machine_image SET latest_version_id = NULL")
    await strands.execute(api.world.engine, "DELETE FROM machine_image_version")
    await api.delete(f"{api.base}/gold")
    audits = [(e["action"], e["resource"], e["outcome"]) for e in logs if e["event"] == "audit"]
    assert audits == [("create", image, "ok"), ("update_latest_version", image, "ok"),
                      ("rename", image, "ok"), ("destroy", image, "InvalidRequest"),
                      ("destroy", version, "ok"), ("destroy", image, "ok")]
    assert dialled == []  # the API writes rows and strands; respirate talks to hosts
