"""The async engine and the few helpers every database user needs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from lib import errors
from lib.config import normalize_database_url

CHECK_VIOLATION = "23514"


def create_engine(url: URL | str, *, pool_size: int = 5, application_name: str = "imagecp",
                  **options: Any) -> AsyncEngine:
    """An asyncpg engine. Connections are checked before use, so a restarted server is survived."""
    if isinstance(url, str):
        url = normalize_database_url(url)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        # Database errors are logged and kept on strands: keep bound values (sealed keys,
        # token hashes) out of their text.
        hide_parameters=True,
        connect_args={"server_settings": {"application_name": application_name}},
        **options,
    )


def text_or_none(value: str) -> str | None:
    """A string to compare with a text column: PostgreSQL text cannot hold NUL, so a value
    with one matches nothing, and is bound as NULL rather than refused by the driver."""
    return None if "\x00" in value else value


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()`, with refusals the database enforces (some only at commit) raised as
    the API errors they stand for."""
    try:
        async with engine.begin() as connection:
            yield connection
    except DBAPIError as error:
        refusal = refusal_of(error)
        if refusal is None:
            raise
        raise refusal from None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: SQLAlchemy's error wraps its adapter's, which wraps
    asyncpg's (a bounded walk: chains can be cyclic)."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return
        yield seen
        seen = getattr(seen, "orig", None) or seen.__cause__


def refusal_of(error: BaseException) -> errors.ApiError | None:
    """The refusal a database error stands for: a trigger refuses a request field as
    SQLSTATE 23514 with COLUMN set (plain CHECK constraints set none, and are not ours)."""
    for cause in _causes(error):
        column = getattr(cause, "column_name", None)
        if getattr(cause, "sqlstate", None) == CHECK_VIOLATION and column:
            return errors.ValidationFailed({column: str(getattr(cause, "message", cause))})
    return None


def violated_constraint(error: BaseException) -> str | None:
    """The name of the constraint a database error reports as violated, if any."""
    for cause in _causes(error):
        if name := getattr(cause, "constraint_name", None):
            return str(name)
    return None


_DISCONNECTS = (
    ConnectionError,
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)


def is_disconnect(error: BaseException, raw: asyncpg.Connection | None = None) -> bool:
    """True when `error` means the connection to the server is gone (not a query failure);
    `raw`, the asyncpg connection the error came from, settles doubtful cases."""
    if raw is not None and raw.is_closed():
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return any(isinstance(cause, _DISCONNECTS) for cause in _causes(error))
