"""What every API request runs inside: one transaction, the caller's token, the project it
may touch, and for changes an audit event naming who did what to which resource, and how it
ended."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lib import db, log, ubid
from lib.api import params
from lib.errors import ApiError, ResourceNotFound
from model import api_token
from model import location as locations

logger = log.get_logger("imagecp.audit")


@dataclass
class Scope:
    connection: AsyncConnection
    principal: api_token.Principal
    action: str | None = None  # what the audit event says was done; None: nothing to audit
    resource: str | None = None

    def project(self, text: str) -> uuid.UUID:
        """The path's project: the token's own, else not found (nothing is revealed)."""
        params.path(text, params.PROJECT)
        if ubid.to_ubid(self.principal.project_id) != text:
            raise ResourceNotFound()
        return self.principal.project_id

    async def location(self, name: str) -> uuid.UUID:
        return await locations.by_name(self.connection, name)


@asynccontextmanager
async def scope(request: Request, action: str | None = None) -> AsyncIterator[Scope]:
    """Authenticate and open the request's transaction; `action` makes the call audited,
    whatever its outcome (refusals the database makes at commit included)."""
    engine: AsyncEngine = request.app.state.engine
    current: Scope | None = None
    outcome = "ok"
    try:
        async with db.transaction(engine) as connection:
            principal = await api_token.authenticate(connection,
                                                     request.headers.get("authorization"))
            current = Scope(connection, principal, action)
            yield current
    except ApiError as error:
        outcome = error.type
        raise
    except BaseException:
        outcome = "error"
        raise
    finally:
        if current is not None and current.action:
            _audit(current, current.action, request, outcome)


def _audit(current: Scope, action: str, request: Request, outcome: str) -> None:
    logger.info("audit", action=action, project=ubid.to_ubid(current.principal.project_id),
                token=ubid.to_ubid(current.principal.token_id),
                resource=current.resource or request.url.path, outcome=outcome)
