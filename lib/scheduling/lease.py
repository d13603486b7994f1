"""The SQL that takes, fences and gives back a strand's lease (asyncpg statements).

A lease is `lease` (until when) plus `lease_holder` (which runner). Every write a step makes
to its strand row is conditioned on both being unchanged since we took the lease, so a runner
whose lease was taken over can never commit a step. JSON goes in and out as text.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from lib.scheduling.state import StrandState

FREE = "now() - interval '1000 years'"
FENCE = "id = $1 AND lease = $2 AND lease_holder = $3"


def _backoff(tries: str, jitter: str) -> str:
    """Seconds until a retry: `tries` is the count before this lease, so the first failure
    retries within [0, 1) s, the n-th within [0, 2^n) s, capped at 600 s. Pre-scheduling at
    lease time also backs off strands whose step kills the whole process."""
    return (f"LEAST(power(2, LEAST({tries}, 20)), 600)"
            f" * (CASE WHEN {jitter} THEN random() ELSE 1 END)")


RETURNED = ("id, parent_id, prog, label, stack::text, retval::text, schedule, lease,"
            " try AS try_")

TAKE = f"""
    UPDATE strand
       SET lease = now() + $3 * interval '1 second', lease_holder = $2,
           try = try + 1, schedule = now() + {_backoff("try", "$4")} * interval '1 second'
     WHERE id IN (SELECT id FROM strand WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED)
       AND exitval IS NULL AND lease < now()
    RETURNING {RETURNED}
"""

RELEASE = f"UPDATE strand SET lease = {FREE}, lease_holder = NULL WHERE {FENCE}"
RELEASE_AFTER_FAILURE = (f"UPDATE strand SET lease = {FREE}, lease_holder = NULL,"
                         f" last_error = $4 WHERE {FENCE}")

# A hop that ends the run leaves the strand due at once (the reference leaves it at the
# lease-time backoff value).
SAVE_HOP = f"""
    UPDATE strand
       SET prog = $4, label = $5, stack = $6::jsonb, retval = $7::jsonb,
           try = 0, last_error = NULL,
           schedule = CASE WHEN $8 THEN LEAST(schedule, now()) ELSE schedule END,
           lease = CASE WHEN $8 THEN {FREE} ELSE lease END,
           lease_holder = CASE WHEN $8 THEN NULL ELSE lease_holder END
     WHERE {FENCE}
    RETURNING schedule
"""

# The compare-and-set: a wake since we read the key ($5) wrote a smaller schedule; keep it.
SAVE_NAP = f"""
    UPDATE strand
       SET stack = $4::jsonb, try = 0, last_error = NULL,
           schedule = CASE WHEN schedule = $5 THEN now() + $6 * interval '1 second'
                           ELSE schedule END,
           lease = CASE WHEN $7 THEN {FREE} ELSE lease END,
           lease_holder = CASE WHEN $7 THEN NULL ELSE lease_holder END
     WHERE {FENCE}
    RETURNING schedule
"""

SAVE_STACK = f"UPDATE strand SET stack = $4::jsonb WHERE {FENCE} RETURNING schedule"

SAVE_EXIT = f"""
    UPDATE strand
       SET exitval = $4::jsonb, retval = NULL, stack = $5::jsonb, try = 0, last_error = NULL,
           lease = {FREE}, lease_holder = NULL
     WHERE {FENCE}
    RETURNING schedule
"""

DELETE_SEMAPHORES = "DELETE FROM semaphore WHERE strand_id = $1"
DELETE_STRAND = f"DELETE FROM strand WHERE {FENCE} RETURNING schedule"

# The last child to exit wakes its parent; the guard makes that exactly the last one.
WAKE_PARENT = """
    UPDATE strand p SET schedule = LEAST(p.schedule, now()) - interval '1 microsecond'
     WHERE p.id = $1
       AND NOT EXISTS (SELECT 1 FROM strand s WHERE s.parent_id = p.id AND s.exitval IS NULL)
"""

# -- respirate: claims in batches, covering free leases and those of processes that are gone --

CLAIM = f"""
    WITH due AS (
        SELECT id, schedule AS due_at, lease_holder AS previous_holder
          FROM strand
         WHERE exitval IS NULL AND schedule < now() AND id BETWEEN $1 AND $2
           AND (lease < now() OR lease_holder = ANY($3::uuid[]))
           AND lease_holder IS DISTINCT FROM $6  -- never our own, even with its lease run out
         ORDER BY schedule
         LIMIT $4
           FOR NO KEY UPDATE SKIP LOCKED)
    UPDATE strand s
       SET lease = now() + $5 * interval '1 second', lease_holder = $6,
           try = s.try + 1, schedule = now() + {_backoff("s.try", "$7")} * interval '1 second'
      FROM due
     WHERE s.id = due.id
    RETURNING s.id, s.parent_id, s.prog, s.label, s.stack::text, s.retval::text, s.schedule,
              s.lease, s.try AS try_, due.due_at,
              COALESCE(due.previous_holder = ANY($3::uuid[]), false) AS reclaimed,
              clock_timestamp() AS claimed_at
"""

# The earliest schedule among strands nobody holds in a range: how long respirate may sleep.
NEXT_DUE = """
    SELECT min(schedule) FROM strand
     WHERE exitval IS NULL AND id BETWEEN $1 AND $2
       AND (lease < now() OR lease_holder = ANY($3::uuid[]))
"""

# After a lost connection: give back every lease we hold that no worker is running.
RELEASE_ORPHANS = f"""
    UPDATE strand SET lease = {FREE}, lease_holder = NULL
     WHERE lease_holder = $1 AND NOT (id = ANY($2::uuid[]))
"""


def state_of(row: asyncpg.Record, holder: uuid.UUID) -> StrandState:
    return StrandState(
        id=row["id"], parent_id=row["parent_id"], prog=row["prog"], label=row["label"],
        stack=json.loads(row["stack"]),
        retval=None if row["retval"] is None else json.loads(row["retval"]),
        schedule=row["schedule"], lease=row["lease"], try_=row["try_"], holder=holder)


def fence(state: StrandState) -> tuple[Any, ...]:
    return (state.id, state.lease, state.holder)


async def take(raw: asyncpg.Connection, strand_id: uuid.UUID, holder: uuid.UUID, *,
               lease_seconds: float, jitter: bool) -> StrandState | None:
    """Take a free (or expired) lease on an unexited strand; None when someone else has it."""
    row = await raw.fetchrow(TAKE, strand_id, holder, lease_seconds, jitter)
    return None if row is None else state_of(row, holder)
