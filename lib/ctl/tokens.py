"""bin/ctl commands for the API's personal access tokens: shown once, kept as a hash."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lib import ubid
from lib.ctl import Refused, _in_transaction, app
from lib.ctl.images import Json, Project, _echo, _id
from model import api_token

token_app = typer.Typer(no_args_is_help=True, help="Personal access tokens for the API.")
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(project: Project, as_json: Json = False) -> None:
    """Create a token for one project; the token is printed once and never kept."""
    async def create(connection: AsyncConnection) -> dict[str, str]:
        project_id = _id(project, ubid.TYPE_PROJECT, "project")
        if not (await connection.execute(text("SELECT 1 FROM project WHERE id = :id"),
                                         {"id": project_id})).scalar():
            raise Refused(f"no project {project}")
        token_id, token = await api_token.create(connection, project_id)
        return {"id": ubid.to_ubid(token_id), "token": token}

    _echo(as_json, _in_transaction(create))


@token_app.command("list")
def token_list(project: Project, as_json: Json = False) -> None:
    async def rows(connection: AsyncConnection) -> list[dict[str, Any]]:
        result = await connection.execute(text(
            "SELECT id, created_at, revoked_at FROM api_token WHERE project_id = :id"
            " ORDER BY created_at"), {"id": _id(project, ubid.TYPE_PROJECT, "project")})
        return [{"id": ubid.to_ubid(row.id), "created_at": row.created_at.isoformat(),
                 "revoked_at": row.revoked_at and row.revoked_at.isoformat()}
                for row in result]

    for row in _in_transaction(rows):
        _echo(as_json, row)


@token_app.command("revoke")
def token_revoke(token: Annotated[str, typer.Argument(help="the token's id (ak…)")]) -> None:
    async def revoke(connection: AsyncConnection) -> None:
        if not await api_token.revoke(connection, _id(token, ubid.TYPE_API_TOKEN, "token")):
            raise Refused(f"no live token {token}")

    _in_transaction(revoke)
