"""A strand run: take the lease, run steps until a nap, an exit or the budget, give it back.

The lease goes back in the commit of the run's last step. Only a failed step needs a commit
of its own: its writes are rolled back, then the lease is released with the error recorded
on the row (`last_error`), and the strand waits out the backoff scheduled at lease time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from lib import db, ubid
from lib.log import get_logger
from lib.scheduling import lease
from lib.scheduling.flow import ChildFailed, LeaseLost, MalformedStrand, Outcome, StrandFailed
from lib.scheduling.state import StrandState
from lib.scheduling.step import run_step
from lib.scheduling.transaction import Transactions

log = get_logger(__name__)

LEASE_SECONDS = 120.0
RUN_BUDGET_SECONDS = 30.0


class StrandRunner:
    """Runs strands on one connection (put in autocommit mode), as one lease holder."""

    def __init__(self, connection: AsyncConnection, *, holder: uuid.UUID | None = None,
                 lease_seconds: float = LEASE_SECONDS, jitter: bool = True,
                 may_step: Callable[[], bool] | None = None) -> None:
        self.connection = connection
        self.holder = holder or uuid.uuid4()
        self.lease_seconds = lease_seconds
        self.jitter = jitter
        # Asked before every step: False (shutting down, heartbeat failing) ends the run.
        self.may_step = may_step
        self.steps = 0  # steps committed by this runner
        self._transactions: Transactions | None = None

    async def transactions(self) -> Transactions:
        if self._transactions is None:
            self._transactions = await Transactions.of(self.connection)
        return self._transactions

    async def take(self, strand_id: uuid.UUID) -> StrandState | None:
        tx = await self.transactions()
        return await lease.take(tx.raw, strand_id, self.holder,
                                lease_seconds=self.lease_seconds, jitter=self.jitter)

    async def run(self, strand_id: uuid.UUID,
                  budget: float = RUN_BUDGET_SECONDS) -> Outcome | None:
        """Run a strand if its lease is free; None when it is held elsewhere or has exited."""
        state = await self.take(strand_id)
        if state is None:
            return None
        return await self.run_leased(state, budget)

    async def run_leased(self, state: StrandState,
                         budget: float = RUN_BUDGET_SECONDS) -> Outcome | None:
        """Run steps of a strand whose lease we hold. Raises StrandFailed after a failed step;
        None when `may_step` stopped the run before any outcome."""
        tx = await self.transactions()
        nested = tx.open  # a parent is donating this step from inside its own transaction
        final_after = time.monotonic() + budget
        outcome: Outcome | None = None
        while True:
            if self.may_step is not None and not self.may_step():
                await tx.raw.execute(lease.RELEASE, *lease.fence(state))
                return outcome
            try:
                result = await run_step(tx, state, self, final_after=final_after)
            except (LeaseLost, StrandFailed):
                raise
            except Exception as error:
                if db.is_disconnect(error, tx.raw):
                    raise  # the lease is reclaimed once our holder is judged gone
                await self._fail(tx, state, error)
                raise StrandFailed(state.id, error) from error
            outcome = result.outcome
            self.steps += 1
            if not result.released:
                continue
            if isinstance(outcome, ChildFailed):
                raise outcome.error
            if state.parent_id is not None and not nested:
                await self._wake_parent(tx, state)
            return outcome

    async def _wake_parent(self, tx: Transactions, state: StrandState) -> None:
        """After the child's exit committed (so the last child always sees its siblings'
        exits); if it fails, the parent still wakes by its reap nap (at most 120 s)."""
        try:
            await tx.raw.execute(lease.WAKE_PARENT, state.parent_id)
        except Exception as error:
            if db.is_disconnect(error, tx.raw):
                raise
            log.error("parent wake failed", strand=ubid.to_ubid(state.id), error=str(error))

    async def _fail(self, tx: Transactions, state: StrandState, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        fields = {"strand": ubid.to_ubid(state.id), "prog_label": f"{state.prog}.{state.label}",
                  "try_": state.try_, "error": reason}
        if isinstance(error, MalformedStrand):
            log.error("strand failed", **fields)
        else:
            log.error("strand failed", **fields, exc_info=error)
        released = await tx.raw.execute(lease.RELEASE_AFTER_FAILURE, *lease.fence(state),
                                        reason[:4000])
        if released != "UPDATE 1":
            log.error("lease violated", strand=ubid.to_ubid(state.id))
