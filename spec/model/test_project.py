"""`project`: the version quota the database keeps (migration 0006) — its count of versions
follows every insert and delete, and a commit past the quota is refused whoever inserts."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from lib import db, ubid
from lib.errors import ValidationFailed
from spec.support import strands
from spec.support.world import World

HELD = "SELECT versions_held FROM project WHERE id = :id"
COUNT = ("SELECT count(*) FROM machine_image_version v JOIN machine_image i"
         " ON i.id = v.machine_image_id WHERE i.project_id = :id")


async def bare_version(world: World, label: str, setting: str | None = None) -> None:
    """A version row inserted by plain SQL, as a seeded test run or an operator would."""
    async with db.transaction(world.engine) as connection:
        if setting is not None:
            await connection.execute(text("SELECT set_config('imagecp.version_quota', :q,"
                                          " true)"), {"q": setting})
        await connection.execute(text(
            "INSERT INTO machine_image_version (id, machine_image_id, version)"
            " VALUES (:id, :image, :label)"),
            {"id": ubid.generate(ubid.TYPE_MACHINE_IMAGE_VERSION), "image": world.image_id,
             "label": label})


async def held(world: World) -> tuple[int, int]:
    return (await strands.scalar(world.engine, HELD, id=world.project_id),
            await strands.scalar(world.engine, COUNT, id=world.project_id))


async def test_versions_held_follows_captures_plain_inserts_and_deletes(seeded: World) -> None:
    assert await held(seeded) == (0, 0)
    await seeded.capture((await seeded.vm("src"))[0], "v1")
    await bare_version(seeded, "bare1")
    await bare_version(seeded, "bare2")
    assert await held(seeded) == (3, 3)
    await strands.execute(seeded.engine, "DELETE FROM machine_image_version"
                          " WHERE version LIKE 'bare%'")
    assert await held(seeded) == (1, 1)


async def test_a_rolled_back_version_is_not_counted(seeded: World) -> None:
    async with seeded.engine.connect() as connection:
        await connection.execute(text(
            "INSERT INTO machine_image_version (id, machine_image_id, version)"
            " VALUES (:id, :image, 'gone')"),
            {"id": ubid.generate(ubid.TYPE_MACHINE_IMAGE_VERSION), "image": seeded.image_id})
        await connection.rollback()
    assert await held(seeded) == (0, 0)


async def test_the_database_refuses_a_version_past_the_projects_quota(seeded: World) -> None:
    await strands.execute(seeded.engine, "UPDATE project SET version_quota = 1")
    await bare_version(seeded, "first")
    with pytest.raises(ValidationFailed) as raised:
        await bare_version(seeded, "second")
    assert raised.value.details == {"version": "Insufficient quota for machine image versions."
                                               " Requested: 2, maximum allowed: 1"}
    assert await held(seeded) == (1, 1)


async def test_the_default_quota_applies_where_the_transaction_names_it(seeded: World) -> None:
    await bare_version(seeded, "first", setting="1")
    with pytest.raises(ValidationFailed):
        await bare_version(seeded, "second", setting="1")
    await bare_version(seeded, "unlimited")  # names no default, and the project has none
    assert await held(seeded) == (2, 2)


async def test_the_refusal_is_a_check_violation_naming_the_version_field(seeded: World) -> None:
    await strands.execute(seeded.engine, "UPDATE project SET version_quota = 0")
    with pytest.raises(DBAPIError) as raised:
        async with seeded.engine.begin() as connection:
            await connection.execute(text(
                "INSERT INTO machine_image_version (id, machine_image_id, version)"
                " VALUES (:id, :image, 'over')"),
                {"id": ubid.generate(ubid.TYPE_MACHINE_IMAGE_VERSION),
                 "image": seeded.image_id})
    assert getattr(raised.value.orig, "sqlstate", None) == db.CHECK_VIOLATION
    assert db.violated_constraint(raised.value) == "machine_image_version_quota"


async def test_captures_racing_past_the_quota_check_are_refused_at_commit(
        seeded: World) -> None:
    # Both read "0 of 1 held" before either commits; the database lets only one through.
    await strands.execute(seeded.engine, "UPDATE project SET version_quota = 1")
    gate = asyncio.Event()
    entered = 0

    async def capture_after_both_read(n: int) -> object:
        nonlocal entered
        async with db.transaction(seeded.engine) as connection:
            facts = await connection.execute(text(HELD), {"id": seeded.project_id})
            assert facts.scalar() == 0
            entered += 1
            if entered == 2:
                gate.set()
            await gate.wait()
            await connection.execute(text(
                "INSERT INTO machine_image_version (id, machine_image_id, version)"
                " VALUES (:id, :image, :label)"),
                {"id": ubid.generate(ubid.TYPE_MACHINE_IMAGE_VERSION),
                 "image": seeded.image_id, "label": f"v{n}"})
        return n

    results = await asyncio.gather(*(capture_after_both_read(n) for n in range(2)),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["ValidationFailed", "int"]
    assert await held(seeded) == (1, 1)
