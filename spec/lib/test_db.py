"""Database helpers: lib/db.py, against a real PostgreSQL server."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import db
from lib.config import ConfigError
from lib.errors import ValidationFailed


@pytest.mark.parametrize("error", [
    ConnectionResetError("reset by peer"),
    ConnectionRefusedError("refused"),
    OSError("network is unreachable"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
])
def test_is_disconnect_is_true_for_connection_errors(error: BaseException) -> None:
    assert db.is_disconnect(error) is True


@pytest.mark.parametrize("error", [
    ValueError("bad value"), RuntimeError("boom"), KeyError("k"),
    asyncpg.exceptions.DivisionByZeroError("division by zero"),
])
def test_is_disconnect_is_false_for_other_errors(error: BaseException) -> None:
    assert db.is_disconnect(error) is False


async def test_is_disconnect_is_true_for_a_terminated_backend(engine: AsyncEngine) -> None:
    async with engine.connect() as victim:
        pid = (await victim.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await victim.commit()
        async with engine.connect() as killer:
            terminated = (await killer.execute(text("SELECT pg_terminate_backend(:pid, 5000)"),
                                               {"pid": pid})).scalar_one()
            await killer.commit()
        assert terminated is True
        with pytest.raises(Exception) as raised:
            await victim.execute(text("SELECT 1"))
        assert db.is_disconnect(raised.value) is True
    # The pool recovers: a fresh connection works.
    async with engine.connect() as fresh:
        assert (await fresh.execute(text("SELECT 1"))).scalar_one() == 1


@pytest.mark.parametrize("statement", ["SELECT 1/0", "SELEC 1", "SELECT * FROM no_such_table"])
async def test_is_disconnect_is_false_for_an_ordinary_sql_error(engine: AsyncEngine,
                                                                statement: str) -> None:
    async with engine.connect() as connection:
        with pytest.raises(DBAPIError) as raised:
            await connection.execute(text(statement))
        assert db.is_disconnect(raised.value) is False
        await connection.rollback()
        assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1  # still usable


async def test_create_engine_accepts_a_postgresql_string(database_url: str) -> None:
    plain = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    assert plain.startswith("postgresql://")
    engine = db.create_engine(plain, pool_size=1, application_name="imagecp-spec-db")
    try:
        assert engine.url.drivername == "postgresql+asyncpg"
        async with engine.connect() as connection:
            row = (await connection.execute(text(
                "SELECT 1, current_database(), current_setting('application_name')"))).one()
        assert tuple(row) == (1, engine.url.database, "imagecp-spec-db")
    finally:
        await engine.dispose()


def test_create_engine_rejects_a_non_postgresql_string() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        db.create_engine("mysql://alice@db.example/imagecp")


async def test_a_trigger_refusing_a_field_is_raised_as_that_validation_failure(
        engine: AsyncEngine) -> None:
    refusal = ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'check_violation',"
               " COLUMN = 'version', MESSAGE = 'too many'; END $$")
    with pytest.raises(ValidationFailed) as raised:
        async with db.transaction(engine) as connection:
            await connection.execute(text(refusal))
    assert raised.value.details == {"version": "too many"}


async def test_other_database_errors_pass_through_a_transaction(engine: AsyncEngine) -> None:
    plain_check = ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'check_violation',"
                   " MESSAGE = 'a table constraint'; END $$")  # no column: not a refusal
    for statement in ("SELECT 1/0", plain_check):
        with pytest.raises(DBAPIError) as raised:
            async with db.transaction(engine) as connection:
                await connection.execute(text(statement))
        assert db.refusal_of(raised.value) is None


async def test_violated_constraint_names_the_constraint(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text(
            "CREATE TEMPORARY TABLE pair (n integer CONSTRAINT pair_n_key UNIQUE)"))
        await connection.execute(text("INSERT INTO pair VALUES (1)"))
        with pytest.raises(DBAPIError) as raised:
            await connection.execute(text("INSERT INTO pair VALUES (1)"))
        await connection.rollback()
    assert db.violated_constraint(raised.value) == "pair_n_key"
    assert db.violated_constraint(ValueError("no database here")) is None
