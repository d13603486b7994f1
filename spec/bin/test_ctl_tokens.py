"""bin/ctl token …: a token is printed once, kept as a hash, listed without its secret and
revocable."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncEngine

from spec.bin.test_ctl import ctl, refusal
from spec.support import strands


async def test_tokens_are_shown_once_listed_without_secrets_and_revoked(
        database_url: str, engine: AsyncEngine) -> None:
    project = json.loads((await ctl(database_url, "project", "create", "acme",
                                    "--json")).stdout)["id"]
    created = json.loads((await ctl(database_url, "token", "create", "--project", project,
                                    "--json")).stdout)
    token_id, secret = created["token"].removeprefix("pat-").split("-")
    assert token_id == created["id"] and token_id.startswith("ak") and len(secret) == 32
    stored = await strands.scalar(engine, "SELECT secret_hash FROM api_token")
    assert secret.encode() not in stored and len(stored) == 32
    listed = await ctl(database_url, "token", "list", "--project", project, "--json")
    assert json.loads(listed.stdout)["id"] == token_id and secret not in listed.stdout
    assert (await ctl(database_url, "token", "revoke", token_id)).returncode == 0
    assert refusal(await ctl(database_url, "token", "revoke", token_id)) == (
        f"ctl: no live token {token_id}")
    unknown = "pj" + project[2:-1] + ("0" if project[-1] != "0" else "1")
    result = await ctl(database_url, "token", "create", "--project", unknown)
    assert result.returncode == 1 and result.stderr.startswith("ctl: ")

