"""The SQL that takes, fences and gives back a strand's lease.

A lease is `lease` (until when) plus `lease_holder` (which runner). Every write a step makes
to its strand row is conditioned on both being unchanged since we took the lease, so a runner
whose lease was taken over can never commit a step.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Boolean, Float, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncConnection

from lib.scheduling.state import StrandState

FREE = "now() - interval '1000 years'"
FENCE = "id = :id AND lease = :lease AND lease_holder = :holder"

# try is the value before the increment: the first failure retries within [0, 1) s, the
# n-th within [0, 2^n) s, capped at 600 s. Pre-scheduling at lease time also backs off
# strands whose step kills the whole process.
def _backoff(tries: str) -> str:
    jitter = "CASE WHEN :jitter THEN random() ELSE 1 END"
    return f"LEAST(power(2, LEAST({tries}, 20)), 600) * ({jitter})"


BACKOFF = _backoff("try")
RETURNED = "id, parent_id, prog, label, stack, retval, schedule, lease, try AS try_"

TAKE = text(f"""
    UPDATE strand
       SET lease = now() + :lease_seconds * interval '1 second', lease_holder = :holder,
           try = try + 1, schedule = now() + {BACKOFF} * interval '1 second'
     WHERE id IN (SELECT id FROM strand WHERE id = :id FOR NO KEY UPDATE SKIP LOCKED)
       AND exitval IS NULL AND lease < now()
    RETURNING {RETURNED}
""").bindparams(bindparam("jitter", type_=Boolean), bindparam("lease_seconds", type_=Float)
               ).columns(stack=JSONB, retval=JSONB)

RELEASE_AFTER_FAILURE = text(f"""
    UPDATE strand SET lease = {FREE}, lease_holder = NULL, last_error = :error
     WHERE {FENCE}
""")

# A hop that ends the run leaves the strand due at once (the reference leaves it at the
# lease-time backoff value).
SAVE_HOP = text(f"""
    UPDATE strand
       SET prog = :prog, label = :label, stack = :stack, retval = :retval,
           try = 0, last_error = NULL,
           schedule = CASE WHEN :final THEN LEAST(schedule, now()) ELSE schedule END,
           lease = CASE WHEN :final THEN {FREE} ELSE lease END,
           lease_holder = CASE WHEN :final THEN NULL ELSE lease_holder END
     WHERE {FENCE}
    RETURNING schedule
""").bindparams(bindparam("stack", type_=JSONB), bindparam("retval", type_=JSONB),
                bindparam("final", type_=Boolean))

# The compare-and-set: a wake since we read `key` wrote a smaller schedule; keep it.
SAVE_NAP = text(f"""
    UPDATE strand
       SET stack = :stack, try = 0, last_error = NULL,
           schedule = CASE WHEN schedule = :key
                           THEN now() + :seconds * interval '1 second' ELSE schedule END,
           lease = CASE WHEN :final THEN {FREE} ELSE lease END,
           lease_holder = CASE WHEN :final THEN NULL ELSE lease_holder END
     WHERE {FENCE}
    RETURNING schedule
""").bindparams(bindparam("stack", type_=JSONB), bindparam("final", type_=Boolean),
                bindparam("seconds", type_=Float))

SAVE_STACK = text(f"UPDATE strand SET stack = :stack WHERE {FENCE} RETURNING schedule"
                  ).bindparams(bindparam("stack", type_=JSONB))

SAVE_EXIT = text(f"""
    UPDATE strand
       SET exitval = :exitval, retval = NULL, stack = :stack, try = 0, last_error = NULL,
           lease = {FREE}, lease_holder = NULL
     WHERE {FENCE}
    RETURNING schedule
""").bindparams(bindparam("stack", type_=JSONB), bindparam("exitval", type_=JSONB))

DELETE_SEMAPHORES = text("DELETE FROM semaphore WHERE strand_id = :id")
DELETE_STRAND = text(f"DELETE FROM strand WHERE {FENCE} RETURNING schedule")

# The last child to exit wakes its parent; the guard makes that exactly the last one.
WAKE_PARENT = text("""
    UPDATE strand p SET schedule = LEAST(p.schedule, now()) - interval '1 microsecond'
     WHERE p.id = :parent_id
       AND NOT EXISTS (SELECT 1 FROM strand s WHERE s.parent_id = p.id AND s.exitval IS NULL)
""")


def fence(state: StrandState) -> dict[str, Any]:
    return {"id": state.id, "lease": state.lease, "holder": state.holder}


@asynccontextmanager
async def atomic(connection: AsyncConnection) -> AsyncIterator[None]:
    """A transaction, or a savepoint when one is already open (a parent donating to a child)."""
    if connection.in_transaction():
        async with connection.begin_nested():
            yield
    else:
        async with connection.begin():
            yield


async def take(connection: AsyncConnection, strand_id: uuid.UUID, holder: uuid.UUID, *,
               lease_seconds: float, jitter: bool) -> StrandState | None:
    """Take a free (or expired) lease on an unexited strand; None when someone else has it."""
    async with atomic(connection):
        row = (await connection.execute(TAKE, {
            "id": strand_id, "holder": holder, "lease_seconds": lease_seconds, "jitter": jitter,
        })).one_or_none()
    return None if row is None else StrandState.from_row(row, holder)


# -- respirate: claims in batches, covering free leases and those of processes that are gone --

CLAIM = text(f"""
    WITH due AS (
        SELECT id, schedule AS due_at, lease_holder AS previous_holder
          FROM strand
         WHERE exitval IS NULL AND schedule < now() AND id BETWEEN :low AND :high
           AND (lease < now() OR lease_holder = ANY(:gone))
         ORDER BY schedule
         LIMIT :limit
           FOR NO KEY UPDATE SKIP LOCKED)
    UPDATE strand s
       SET lease = now() + :lease_seconds * interval '1 second', lease_holder = :holder,
           try = s.try + 1, schedule = now() + {_backoff("s.try")} * interval '1 second'
      FROM due
     WHERE s.id = due.id
    RETURNING s.id, s.parent_id, s.prog, s.label, s.stack, s.retval, s.schedule, s.lease,
              s.try AS try_, due.due_at, COALESCE(due.previous_holder = ANY(:gone), false)
              AS reclaimed, clock_timestamp() AS claimed_at
""").bindparams(
    bindparam("jitter", type_=Boolean), bindparam("lease_seconds", type_=Float),
    bindparam("gone", type_=ARRAY(UUID(as_uuid=True))),
).columns(stack=JSONB, retval=JSONB)

# The earliest schedule among strands nobody holds in a range: how long respirate may sleep.
NEXT_DUE = text("""
    SELECT min(schedule) FROM strand
     WHERE exitval IS NULL AND lease < now() AND id BETWEEN :low AND :high
""")

RELEASE = text(f"UPDATE strand SET lease = {FREE}, lease_holder = NULL WHERE {FENCE}")

# After a lost connection: give back every lease we hold that no worker is running.
RELEASE_ORPHANS = text(f"""
    UPDATE strand SET lease = {FREE}, lease_holder = NULL
     WHERE lease_holder = :holder AND NOT (id = ANY(:running))
""").bindparams(bindparam("running", type_=ARRAY(UUID(as_uuid=True))))
