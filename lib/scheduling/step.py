"""One step: a strand's current label run in one transaction together with its outcome."""

from __future__ import annotations

import contextvars
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from lib import ubid
from lib.log import enabled, get_logger
from lib.scheduling import deadlines, lease, registry, timefmt
from lib.scheduling.flow import (
    EngineBug,
    Exit,
    FlowControl,
    Hop,
    LeaseLost,
    MalformedStrand,
    Nap,
    Outcome,
)
from lib.scheduling.snapshot import SemaphoreSnapshot
from lib.scheduling.state import StrandState
from lib.scheduling.transaction import Transactions
from model import page

if TYPE_CHECKING:
    from lib.scheduling.runner import StrandRunner

log = get_logger(__name__)
SLOW_STEP_SECONDS = 1.0

# "Prog.label" of the outermost label running in this task (a parent's, under reap).
current_label: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_label", default=None)


@dataclass
class StepContext:
    """What a prog instance sees of the step it runs in."""

    connection: AsyncConnection
    strand: StrandState
    snapshot: SemaphoreSnapshot
    runner: StrandRunner
    started: datetime
    # (prog, target) of deadline pages to resolve when the outcome is applied
    pages_to_resolve: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class StepResult:
    outcome: Outcome
    released: bool  # the lease went back (or the row went away) in the step's commit


def _check_stack(state: StrandState) -> None:
    stack = state.stack
    if not isinstance(stack, list) or not stack or not all(isinstance(f, dict) for f in stack):
        raise MalformedStrand(state.id, f"stack must be a non-empty list of objects: {stack!r}")


def _prog_class(state: StrandState) -> Any:
    try:
        cls: Any = registry.load(state.prog)
    except LookupError as error:
        raise MalformedStrand(state.id, str(error)) from None
    if state.label not in cls.labels:
        raise MalformedStrand(state.id, f"prog {state.prog} has no label {state.label!r}")
    return cls


async def _settle_deadlines(tx: Transactions, state: StrandState, started: datetime) -> None:
    """Resolve a reached target's page and page expired deadlines, in a commit of their own,
    so that a strand whose label keeps failing still pages."""
    target = deadlines.reached(state.stack, state.label)
    overdue = deadlines.expired(state.stack, state.prog, started)
    if target is None and not overdue:
        return
    stack = state.copy_stack()
    async with tx.atomic():
        if target is not None:
            await page.request_resolve(tx.connection,
                                       deadlines.page_tag(state.id, state.prog, target))
            for key in deadlines.KEYS:
                stack[0].pop(key, None)
        for item in overdue:
            frame = stack[item.frame_index]
            summary = deadlines.summary(state.id, item, state.label)
            if frame.get("deadline_page") is False:
                log.warning(summary, expired_deadline={
                    "strand": ubid.to_ubid(state.id), "prog": item.prog, "label": state.label,
                    "deadline_target": item.target})
            else:
                await page.assemble(tx.connection, summary,
                                    deadlines.page_tag(state.id, item.prog, item.target),
                                    related_resources=[ubid.to_ubid(state.id)])
            frame["deadline_notified"] = True
        if await tx.raw.fetchrow(lease.SAVE_STACK, *lease.fence(state), json.dumps(stack)) is None:
            raise LeaseLost(state.id)
    state.stack = stack


async def run_step(tx: Transactions, state: StrandState, runner: StrandRunner, *,
                   final_after: float) -> StepResult:
    """Run the current label; commit its writes with its outcome; release the lease in the same
    commit when the run ends here (non-zero nap, exit, or `final_after` on the monotonic clock
    passed)."""
    started = timefmt.now()
    clock = time.monotonic()
    _check_stack(state)
    cls = _prog_class(state)
    await _settle_deadlines(tx, state, started)
    if "last_label_changed_at" not in state.stack[0]:
        state.stack[0]["last_label_changed_at"] = timefmt.write(started)
    try:
        async with tx.atomic(deferred=True):
            snapshot = SemaphoreSnapshot(tx.connection, tx.raw, state.id)
            if cls.semaphore_names:
                await snapshot.load()
            context = StepContext(tx.connection, state, snapshot, runner, started)
            outcome = await _run_label(cls(context), state)
            if snapshot.pending or context.pages_to_resolve:
                await tx.ensure()  # more than one statement to commit: all in the transaction
            await snapshot.flush()
            for prog, target in context.pages_to_resolve:
                await page.request_resolve(tx.connection,
                                           deadlines.page_tag(state.id, prog, target))
            final = (isinstance(outcome, Exit)
                     or (isinstance(outcome, Nap) and outcome.seconds != 0)
                     or time.monotonic() >= final_after)
            await _apply(tx, state, outcome, final=final)
    finally:
        duration = time.monotonic() - clock
        if duration > SLOW_STEP_SECONDS:
            log.info("finished strand", strand=ubid.to_ubid(state.id), try_=state.try_,
                     duration=round(duration, 3), prog_label=f"{state.prog}.{state.label}")
    _log_outcome(state, outcome)
    return StepResult(outcome, final)


async def _run_label(prog: Any, state: StrandState) -> Outcome:
    token = current_label.set(current_label.get() or f"{state.prog}.{state.label}")
    try:
        await prog.before_run()
        await getattr(prog, state.label)()
    except FlowControl as signal:
        return signal.outcome
    finally:
        current_label.reset(token)
    raise EngineBug(f"BUG: Prog {state.prog}#{state.label} did not provide flow control")


async def _apply(tx: Transactions, state: StrandState, outcome: Outcome, *,
                 final: bool) -> None:
    fence = lease.fence(state)
    raw = tx.raw
    if isinstance(outcome, Hop):
        row = await raw.fetchrow(lease.SAVE_HOP, *fence, outcome.prog, outcome.label,
                                 json.dumps(outcome.stack), _json(outcome.retval), final)
    elif isinstance(outcome, Nap):
        seconds = deadlines.clamp_nap(state.stack, outcome.seconds, timefmt.now())
        row = await raw.fetchrow(lease.SAVE_NAP, *fence, json.dumps(state.stack),
                                 state.schedule, seconds, final)
    elif isinstance(outcome, Exit) and state.parent_id is not None:
        row = await raw.fetchrow(lease.SAVE_EXIT, *fence, json.dumps(outcome.value),
                                 json.dumps(state.stack))
    elif isinstance(outcome, Exit):
        await tx.ensure()
        await raw.execute(lease.DELETE_SEMAPHORES, state.id)
        row = await raw.fetchrow(lease.DELETE_STRAND, *fence)
    else:
        raise EngineBug(f"BUG: unknown outcome {outcome!r}")
    if row is None:
        raise LeaseLost(state.id)
    if isinstance(outcome, Hop):
        state.prog, state.label, state.stack = outcome.prog, outcome.label, outcome.stack
        state.retval = outcome.retval
    if isinstance(outcome, Nap):
        state.schedule = row["schedule"]  # the key of the next nap in this run
    state.try_ = 0


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _log_outcome(state: StrandState, outcome: Outcome) -> None:
    if isinstance(outcome, Hop):  # debug: at thousands of hops a second, info would drown
        if not enabled("debug"):
            return
        log.debug("hopped", strand=ubid.to_ubid(state.id),
                  from_=f"{outcome.from_prog}.{outcome.from_label}",
                  to=f"{outcome.prog}.{outcome.label}")
    elif isinstance(outcome, Exit):
        log.info("exited", strand=ubid.to_ubid(state.id),
                 from_=f"{outcome.prog}.{outcome.label}", exitval=outcome.value)
