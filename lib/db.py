"""The async engine and the few helpers every database user needs."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lib.config import normalize_database_url


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
    # SQLAlchemy wraps its own adapter exception, which wraps asyncpg's: walk the chain.
    seen: BaseException | None = error
    for _ in range(8):  # a bounded walk: chains can be cyclic
        if seen is None:
            break
        if isinstance(seen, _DISCONNECTS):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False
