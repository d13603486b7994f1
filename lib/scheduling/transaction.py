"""Transactions of the engine on a connection kept in autocommit mode.

A step's BEGIN is deferred: a label that does no database work commits its outcome as one
autocommit statement (one round trip, atomic by itself). The first statement a label sends
through SQLAlchemy opens the transaction just before it runs (a `before_cursor_execute`
hook), so everything the label writes commits or rolls back with the outcome. The engine's
own statements go straight to asyncpg; nested levels (a parent donating a step to a child)
are savepoints.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import await_only

_OPEN: weakref.WeakKeyDictionary[Any, Transactions] = weakref.WeakKeyDictionary()


class Transactions:
    def __init__(self, connection: AsyncConnection, raw: asyncpg.Connection) -> None:
        self.connection = connection
        self.raw = raw
        self.depth = 0  # open levels: 1 is the transaction, more are savepoints
        self._owed = False  # a deferred BEGIN, sent before the next statement

    @classmethod
    async def of(cls, connection: AsyncConnection) -> Transactions:
        """Put `connection` in autocommit mode under our transaction control."""
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        raw = (await connection.get_raw_connection()).driver_connection
        transactions = _OPEN.get(raw)
        if transactions is None or transactions.connection is not connection:
            transactions = cls(connection, raw)
            _OPEN[raw] = transactions
        return transactions

    @property
    def open(self) -> bool:
        return self.depth > 0 or self._owed

    async def ensure(self) -> None:
        """Send a deferred BEGIN now (before a statement that must be in the transaction)."""
        if self._owed:
            self._owed = False
            await self.raw.execute("BEGIN")
            self.depth = 1

    def _owed_begin(self) -> None:
        if self._owed:
            self._owed = False
            await_only(self.raw.execute("BEGIN"))
            self.depth = 1

    @asynccontextmanager
    async def atomic(self, *, deferred: bool = False) -> AsyncIterator[None]:
        """A transaction (BEGIN deferred when asked), or a savepoint inside an open one."""
        savepoint = None
        if not self.open:
            if deferred:
                self._owed = True
            else:
                await self.raw.execute("BEGIN")
                self.depth = 1
        else:
            await self.ensure()
            self.depth += 1
            savepoint = f"step_{self.depth}"
            await self.raw.execute(f"SAVEPOINT {savepoint}")
        try:
            yield
        except BaseException:
            await self._undo(savepoint)
            raise
        if savepoint is not None:
            await self.raw.execute(f"RELEASE SAVEPOINT {savepoint}")
            self.depth -= 1
        elif self._owed:
            self._owed = False  # nothing was ever sent inside: nothing to commit
        else:
            self.depth = 0
            await self.raw.execute("COMMIT")

    async def _undo(self, savepoint: str | None) -> None:
        try:
            if savepoint is not None:
                self.depth -= 1
                await self.raw.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                await self.raw.execute(f"RELEASE SAVEPOINT {savepoint}")
            elif self._owed:
                self._owed = False
            else:
                self.depth = 0
                await self.raw.execute("ROLLBACK")
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
            self.depth, self._owed = 0, False  # the connection is gone: so is the transaction


@event.listens_for(Engine, "before_cursor_execute")
def _begin_if_owed(connection: Any, *_: Any) -> None:
    transactions = _OPEN.get(connection.connection.driver_connection)
    if transactions is not None:
        transactions._owed_begin()
