"""The HTTP API against the real database: every error case of the reference's API section,
the bodies of successful calls, audit events, and concurrent creates of one label."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.exc import DBAPIError

from lib import ubid
from lib.api import create_app, render
from model import api_token
from spec.support import strands
from spec.support.api import Api, token_for

NOT_FOUND = {"error": {"code": 404, "type": "ResourceNotFound", "details": None,
                       "message": "Sorry, we couldn’t find the resource you’re looking for."}}
INVALID_TOKEN = {"error": {"code": 401, "type": "InvalidCredentials",
                           "message": "invalid personal access token provided in"
                                      " Authorization header"}}


def error(response: Any, status: int, kind: str, message: str,
          details: dict[str, str] | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": {"code": status, "type": kind, "message": message,
                                          "details": details}}


async def ready(api: Api, version_id: Any) -> None:
    await strands.execute(api.world.engine, "UPDATE machine_image_version_metal SET status ="
                          " 'ready', archive_size_mib = 3, pinned_source_vm_id = NULL"
                          " WHERE id = :id", id=version_id)


# -- authentication --------------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer abc", "Bearer pat-xyz",
                                    "pat-ak00000000000000000000000000-secret"])
async def test_a_missing_or_malformed_token_is_refused(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await api.client.get(api.base, headers=headers)
    error(response, 401, "MissingCredentials",
          "must include personal access token in Authorization header")


async def test_unknown_wrong_and_revoked_tokens_get_one_fixed_answer(api: Api) -> None:
    token_id, secret = api.token.rsplit("-", 1)
    unknown = f"pat-{ubid.to_ubid(ubid.generate(ubid.TYPE_API_TOKEN))}-{secret}"
    for token in (unknown, f"{token_id}-{secret[:-1]}x", f"{token_id}-{secret}extra"):
        response = await api.client.get(api.base, headers=api.auth(token))
        assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    async with api.world.engine.begin() as connection:
        assert await api_token.revoke(connection, api.token_id)
    response = await api.client.get(api.base, headers=api.auth())
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)


async def test_the_bearer_word_is_case_insensitive_and_may_take_a_colon(api: Api) -> None:
    for header in (f"bearer {api.token}", f"BEARER:  {api.token}"):
        response = await api.client.get(api.base, headers={"Authorization": header})
        assert response.status_code == 200, response.text


async def test_another_projects_images_are_indistinguishable_from_none(api: Api) -> None:
    other = ubid.generate(ubid.TYPE_PROJECT)
    await strands.execute(api.world.engine, "INSERT INTO project (id, name) VALUES"
                          " (:id, 'other')", id=other)
    _, their_token = await token_for(api.world.engine, other)
    for path in (api.base, f"{api.base}/base", f"{api.base}/base/version",
                 f"/project/{ubid.to_ubid(ubid.generate(ubid.TYPE_PROJECT))}/machine-image"):
        theirs = await api.client.get(path, headers=api.auth(their_token))
        assert (theirs.status_code, theirs.json()) == (404, NOT_FOUND)
    missing = await api.client.get(f"{api.base}/nothing", headers=api.auth())
    assert (missing.status_code, missing.json()) == (404, NOT_FOUND)
    # Not "deleted" (204) either: another project's path is simply not found.
    theirs = await api.client.delete(f"{api.base}/base", headers=api.auth(their_token))
    assert (theirs.status_code, theirs.json()) == (404, NOT_FOUND)
    assert (await api.get(f"{api.base}/base")).status_code == 200
    # Their image's id under our own path is no more found than a name would be.
    their_image = ubid.generate(ubid.TYPE_MACHINE_IMAGE)
    await strands.execute(api.world.engine, "INSERT INTO machine_image (id, project_id,"
                          " location_id, name, arch) VALUES (:id, :p, :l, 'theirs', 'x64')",
                          id=their_image, p=other, l=api.world.location_id)
    for path in (f"{api.base}/{ubid.to_ubid(their_image)}", f"{api.base}/theirs",
                 f"{api.base}/{ubid.to_ubid(their_image)}/version"):
        mine = await api.client.get(path, headers=api.auth())
        assert (mine.status_code, mine.json()) == (404, NOT_FOUND)


# -- validation ------------------------------------------------------------------------------

async def test_path_parameters_must_match_their_patterns(api: Api) -> None:
    error(await api.get("/project/pjBAD/location/lab/machine-image"), 400, "BadRequest",
          'Parameter "pjBAD" does not match pattern ^pj[0-9a-hj-km-np-tv-z]{24}$')
    error(await api.get(f"{api.base}/Bad_Name"), 400, "BadRequest",
          'Parameter "Bad_Name" does not match pattern ^[a-z0-9](?:[a-z0-9\\-]{0,61}[a-z0-9])?$')
    error(await api.post(f"{api.base}/base/version/-v1", {"vm": "x"}), 400, "BadRequest",
          'Parameter "-v1" does not match pattern ^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$')
    shaped = ubid.to_ubid(ubid.generate(ubid.TYPE_MACHINE_IMAGE))
    response = await api.post(f"{api.base}/{shaped}", {"vm": "x"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "BadRequest"


async def test_an_unknown_location_names_the_available_ones(api: Api) -> None:
    for location in ("moon", "lab%00"):  # a NUL, which PostgreSQL text cannot hold
        path = api.base.replace("/lab/", f"/{location}/")
        for response in (await api.get(path), await api.post(f"{path}/base/version/v1",
                                                             {"vm": "x" * 26})):
            error(response, 404, "InvalidLocation",
                  "Validation failed for following path components: location",
                  {"location": "Given location is not a valid location. Available locations:"
                               " lab"})


@pytest.mark.parametrize(("body", "details"), [
    (b"{not json", {"body": "Request body isn't a valid JSON object."}),
    (b"[1, 2]", {"body": "Request body isn't a valid JSON object."}),
    (b'{"vm": "x", "color": "red", "size": 1}',
     {"body": "Request body contains unrecognized parameters: color, size"}),
    (b'{"destroy_source": true}', {"body": "Request body must include required parameters: vm"}),
])
async def test_bodies_must_be_objects_of_the_declared_properties(
        api: Api, body: bytes, details: dict[str, str]) -> None:
    response = await api.client.post(f"{api.base}/base/version/v1", content=body,
                                     headers=api.auth())
    error(response, 400, "BadRequest", "Validation failed for following fields: body", details)


async def test_property_types_are_checked(api: Api) -> None:
    response = await api.post(f"{api.base}/base/version/v1", {"vm": "x", "destroy_source": 1})
    assert response.status_code == 400 and response.json()["error"]["type"] == "BadRequest"
    assert "destroy_source" in response.json()["error"]["message"]


async def test_unknown_routes_are_not_found_and_unknown_methods_not_allowed(api: Api) -> None:
    route_miss = {"error": {k: v for k, v in NOT_FOUND["error"].items() if k != "details"}}
    for path in ("/nowhere", "/project", f"{api.base}/base/versions"):
        response = await api.client.get(path, headers=api.auth())
        assert (response.status_code, response.json()) == (404, route_miss)
    response = await api.client.put(api.base, headers=api.auth())
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert response.json()["error"]["type"] == "MethodNotAllowed"


async def test_bad_pagination_is_refused(api: Api) -> None:
    error(await api.get(api.base, params={"order_column": "arch"}), 400, "InvalidRequest",
          "Validation failed for following fields: order_column",
          {"order_column": "Supported values: id, name"})
    response = await api.get(api.base, params={"page_size": "many"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "BadRequest"


# -- server errors ---------------------------------------------------------------------------

class _Retryable(Exception):
    pgcode = "40001"  # what asyncpg's serialization failure carries


@pytest.mark.parametrize(("failure", "kind", "message"), [
    (RuntimeError("boom"), "UnexpectedError",
     "Sorry, we couldn’t process your request because of an unexpected error."),
    (DBAPIError("SELECT", None, _Retryable()), "InternalServerError",
     "There was a temporary error attempting to make this change, please try again."),
])
async def test_server_failures_have_the_reference_error_shape(
        api: Api, monkeypatch: pytest.MonkeyPatch, logs: list[Any], failure: Exception,
        kind: str, message: str) -> None:
    async def broken(*args: Any) -> None:
        raise failure

    monkeypatch.setattr(render, "image", broken)
    transport = httpx.ASGITransport(app=create_app(api.world.engine),
                                    raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        response = await client.get(f"{api.base}/base", headers=api.auth())
    error(response, 500, kind, message)
    assert "boom" not in response.text
    # Only the unexpected is an operator's problem; a retryable conflict is the client's.
    logged = [e for e in logs if e["event"] == "api request failed"]
    assert len(logged) == (kind == "UnexpectedError")
