"""`api_token`: a personal access token, scoped to one project; only its hash is kept.

A token reads `pat-<ak… id>-<32 letters and digits>`. Checking one costs a primary-key read
and a constant-time comparison of SHA-256 digests (the secret is random, so no slow hash is
needed); unknown, revoked and mismatched tokens are refused alike.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from lib import ubid
from lib.errors import InvalidCredentials, MissingCredentials
from model.base import Base

SECRET_LENGTH = 32
HEADER = re.compile(r"bearer:?\s+pat-([0-9a-z]{26})-([0-9A-Za-z]+)", re.IGNORECASE)
# Compared against when the token id is unknown, so every refusal costs the same.
_NO_TOKEN = hashlib.sha256(b"no such token").digest()


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("project.id"))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    revoked_at: Mapped[datetime | None]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a token, and the one project it may touch."""

    token_id: uuid.UUID
    project_id: uuid.UUID


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create(connection: AsyncConnection, project_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    """A new token for the project; returns its id and the token, which is not kept."""
    alphabet = string.ascii_letters + string.digits
    secret = "".join(secrets.choice(alphabet) for _ in range(SECRET_LENGTH))
    token_id = ubid.generate(ubid.TYPE_API_TOKEN)
    await connection.execute(text(
        "INSERT INTO api_token (id, project_id, secret_hash) VALUES (:id, :project_id, :hash)"),
        {"id": token_id, "project_id": project_id, "hash": _digest(secret)})
    return token_id, f"pat-{ubid.to_ubid(token_id)}-{secret}"


async def revoke(connection: AsyncConnection, token_id: uuid.UUID) -> bool:
    """Revoke a token; False when there is no such live token."""
    return bool((await connection.execute(text(
        "UPDATE api_token SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL"
        " RETURNING 1"), {"id": token_id})).scalar())


async def authenticate(connection: AsyncConnection, header: str | None) -> Principal:
    """The principal of an `Authorization` header, or MissingCredentials / InvalidCredentials."""
    found = HEADER.fullmatch(header.strip()) if header else None
    if found is None:
        raise MissingCredentials()
    try:
        token_id = ubid.to_uuid(found.group(1))
    except ubid.UbidParseError:
        raise InvalidCredentials() from None
    row = (await connection.execute(text(
        "SELECT project_id, secret_hash FROM api_token WHERE id = :id AND revoked_at IS NULL"),
        {"id": token_id})).one_or_none()
    matches = hmac.compare_digest(row.secret_hash if row else _NO_TOKEN,
                                  _digest(found.group(2)))
    if row is None or not matches or not found.group(1).startswith(ubid.TYPE_API_TOKEN):
        raise InvalidCredentials()
    return Principal(token_id, row.project_id)
