"""The Prog DSL: labels are async methods; each ends with hop, nap, pop, push or reap.

    class Greeter(Prog):
        semaphores = ("destroy",)

        @label
        async def start(self) -> None:
            self.hop(self.wait)

        @label
        async def wait(self) -> None:
            self.nap(30)

Flow control is a BaseException (`FlowControl`), so `except Exception` in a label cannot
swallow it. Frame keys are read through `frame` or `FrameField` descriptors and written with
`frame_set`; writes are saved with the step's outcome and lost if the step raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn, TypeVar, overload

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from lib import ubid
from lib.scheduling import registry, timefmt
from lib.scheduling.flow import ChildFailed, EngineBug, Exit, FlowControl, Hop, Nap, StrandFailed
from lib.scheduling.step import StepContext
from lib.scheduling.step import current_label as _current_label

HIBERNATE_SECONDS = 31_536_000_000  # 1000 years: asleep until a semaphore wakes it
DEFAULT_NAP_SECONDS = 30
REAP_FALLBACK_NAP = 120

LabelFn = TypeVar("LabelFn", bound=Callable[..., Awaitable[None]])
Label = Callable[[], Awaitable[None]]  # a bound label method: self.wait
ForeignLabel = str | Callable[..., Awaitable[None]]  # another prog's label: "start", Test.wait

_INSERT_CHILD = text(
    "INSERT INTO strand (id, parent_id, prog, label, stack) VALUES (:id, :parent_id, :prog,"
    " :label, :stack)").bindparams(bindparam("stack", type_=JSONB))
_CHILDREN = text("""
    SELECT id, prog, label, exitval, schedule, lease < now() AS free,
           (lease < now() AND exitval IS NOT NULL) AS reapable,
           EXTRACT(EPOCH FROM schedule - now())::float8 AS due_in
      FROM strand WHERE parent_id = :parent_id AND (CAST(:prog AS text) IS NULL OR prog = :prog)
     ORDER BY schedule""").columns(exitval=JSONB)
_DELETE_SEMAPHORES = text("DELETE FROM semaphore WHERE strand_id = :id")
_DELETE_CHILD = text("DELETE FROM strand WHERE id = :id")


def label(fn: LabelFn) -> LabelFn:
    """Declare a method as a label: a state of the prog that `hop` may target."""
    fn.__prog_label__ = True  # type: ignore[attr-defined]
    return fn


class FrameField:
    """A key of the current frame exposed as an attribute (`level = FrameField("test_level")`)."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key or ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = self.key or name

    @overload
    def __get__(self, prog: None, owner: type) -> FrameField: ...
    @overload
    def __get__(self, prog: Prog, owner: type) -> Any: ...
    def __get__(self, prog: Prog | None, owner: type) -> Any:
        return self if prog is None else prog.frame.get(self.key)

    def __set__(self, prog: Prog, value: Any) -> None:
        prog.frame_set(self.key, value)


class Prog:
    # Semaphore names this prog reads; "destroy" brings "destroying" and the destroy protocol.
    semaphores: ClassVar[tuple[str, ...]] = ()
    labels: ClassVar[frozenset[str]] = frozenset()
    semaphore_names: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.labels = frozenset(name for name in dir(cls)
                               if getattr(getattr(cls, name), "__prog_label__", False))
        shadowing = sorted(cls.labels & set(dir(Prog)))
        if shadowing:
            raise EngineBug(f"BUG: labels of {cls.__name__} shadow Prog methods: {shadowing}")
        names = set(cls.semaphores)
        if "destroy" in names:
            names.add("destroying")
        cls.semaphore_names = frozenset(names)

    def __init__(self, context: StepContext) -> None:
        self._context = context
        self._frame: Mapping[str, Any] | None = None

    # -- where we are --------------------------------------------------------------------

    @property
    def connection(self) -> AsyncConnection:
        """The step's connection: every write through it commits or rolls back with the step."""
        return self._context.connection

    @property
    def strand_id(self) -> uuid.UUID:
        return self._context.strand.id

    @property
    def prog_name(self) -> str:
        return self._context.strand.prog

    @property
    def label_name(self) -> str:
        return self._context.strand.label

    @property
    def subject_id(self) -> uuid.UUID:
        subject = self.frame.get("subject_id")
        return uuid.UUID(str(subject)) if subject else self.strand_id

    @property
    def frame(self) -> Mapping[str, Any]:
        """A read-only view of the top frame."""
        if self._frame is None:
            self._frame = MappingProxyType(dict(self._context.strand.stack[0]))
        return self._frame

    @property
    def stack(self) -> list[dict[str, Any]]:
        return self._context.strand.copy_stack()

    @property
    def retval(self) -> dict[str, Any] | None:
        return self._context.strand.retval

    def frame_set(self, key: str, value: Any) -> None:
        self._context.strand.stack[0][key] = value
        self._frame = None

    def delete_from_stack(self, *keys: str) -> None:
        for key in keys:
            self._context.strand.stack[0].pop(key, None)
        self._frame = None

    # -- flow control ----------------------------------------------------------------------

    def _label_name(self, target: Any, prog: type[Prog] | None = None) -> str:
        owner = prog or type(self)
        if isinstance(target, str):
            if prog is None:
                raise EngineBug("BUG: #hop only accepts a label method, not a string")
            name = target
        else:
            name = getattr(target, "__name__", None) or ""
            if not getattr(target, "__prog_label__", False):
                raise EngineBug(f"BUG: not valid hop target: {target!r}")
        if name not in owner.labels:
            raise EngineBug(f"BUG: not valid hop target: {name!r}")
        return name

    def _hop_outcome(self, name: str) -> Hop:
        stack = self.stack
        stack[0]["last_label_changed_at"] = timefmt.write(timefmt.now())
        return Hop(self.prog_name, self.label_name, self.prog_name, name, stack, None)

    def hop(self, target: Label) -> NoReturn:
        """Continue at another label of this prog, within the same run when time allows."""
        raise FlowControl(self._hop_outcome(self._label_name(target)))

    def nap(self, seconds: float = DEFAULT_NAP_SECONDS) -> NoReturn:
        """Sleep; a semaphore increment wakes the strand earlier. `nap(0)`: run again now."""
        raise FlowControl(Nap(float(seconds)))

    def hibernate(self) -> NoReturn:
        self.nap(HIBERNATE_SECONDS)

    def pop(self, value: str | Mapping[str, Any]) -> NoReturn:
        """Return to the label that pushed this frame (it sees `retval`), or exit the strand."""
        if isinstance(value, str):
            value = {"msg": value}
        elif not isinstance(value, Mapping):
            raise EngineBug("BUG: must pop with string or mapping")
        stack = self.stack
        top = stack[0]
        if "deadline_at" in top:
            self._context.pages_to_resolve.append((self.prog_name, top.get("deadline_target")))
        link = top.get("link")
        if link:
            raise FlowControl(Hop(self.prog_name, self.label_name, str(link[0]), str(link[1]),
                                  stack[1:], dict(value)))
        if len(stack) > 1:
            raise EngineBug("BUG: expect no stacks exceeding depth 1 with no back-link")
        raise FlowControl(Exit(self.prog_name, self.label_name, dict(value)))

    def push(self, prog: type[Prog], frame: Mapping[str, Any] | None = None,
             label: ForeignLabel = "start") -> NoReturn:
        """Run another prog on top of this frame; its `pop` returns here with `retval`."""
        name = registry.name_of(prog)
        target = self._label_name(label, prog)
        new_frame = {"subject_id": str(self.subject_id),
                     "link": [self.prog_name, self.label_name], **(frame or {})}
        stack = self.stack
        stack[0]["last_label_changed_at"] = timefmt.write(timefmt.now())
        raise FlowControl(Hop(self.prog_name, self.label_name, name, target,
                              [new_frame, *stack], None))

    async def bud(self, prog: type[Prog], frame: Mapping[str, Any] | None = None,
                  label: ForeignLabel = "start") -> uuid.UUID:
        """Start a child strand now (in this step's transaction); the step goes on."""
        child_id = ubid.generate(ubid.TYPE_STRAND)
        await self.connection.execute(_INSERT_CHILD, {
            "id": child_id, "parent_id": self.strand_id, "prog": registry.name_of(prog),
            "label": self._label_name(label, prog),
            "stack": [{"subject_id": str(self.subject_id), **(frame or {})}]})
        return child_id

    async def reap(self, hop: Label | None = None, *,
                   reaper: Callable[[Row[Any]], Awaitable[None]] | None = None,
                   nap: float | None = None, fallthrough: bool = False,
                   prog: type[Prog] | None = None,
                   when_done: Callable[[], Awaitable[None]] | None = None) -> None:
        """Delete exited children (calling `reaper` with each), then:

        no children left → hop to `hop` (or await `when_done`); `fallthrough` → return;
        `nap` → nap; otherwise give one step of our time to the first child we can lease and
        nap until just before the earliest child is due.
        """
        children = list(await self.connection.execute(_CHILDREN, {
            "parent_id": self.strand_id, "prog": registry.name_of(prog) if prog else None}))
        active = [child for child in children if not child.reapable]
        for child in children:
            if child.reapable:
                await self._delete_exited(child.id)
                if reaper is not None:
                    await reaper(child)
        if not active:
            if hop is not None:
                self.hop(hop)
            if when_done is not None:
                await when_done()
        if fallthrough:
            return
        if nap is not None:
            self.nap(nap)
        await self._donate(active)

    async def _delete_exited(self, strand_id: uuid.UUID) -> None:
        for grandchild in await self.connection.execute(
                _CHILDREN, {"parent_id": strand_id, "prog": None}):
            if grandchild.reapable:
                await self._delete_exited(grandchild.id)
        await self.connection.execute(_DELETE_SEMAPHORES, {"id": strand_id})
        await self.connection.execute(_DELETE_CHILD, {"id": strand_id})

    async def _donate(self, active: list[Row[Any]]) -> NoReturn:
        for child in active:
            error: StrandFailed | None = None
            try:
                outcome = await self._context.runner.run(child.id, budget=0)
            except StrandFailed as failure:
                error, outcome = failure, None
            else:
                if outcome is None:
                    continue  # leased elsewhere
            if error is None and not isinstance(outcome, Nap):
                self.nap(0)  # the child hopped or exited: look again right away
            if error is None and len(active) == 1 and isinstance(outcome, Nap):
                seconds = outcome.seconds
            else:
                seconds = await self._earliest_child_due()
            seconds = min(max(seconds - 0.1, 0.1), float(REAP_FALLBACK_NAP))
            if error is not None:
                raise FlowControl(ChildFailed(seconds, error))
            self.nap(seconds)
        self.nap(REAP_FALLBACK_NAP)

    async def _earliest_child_due(self) -> float:
        dues = [child.due_in for child in await self.connection.execute(
            _CHILDREN, {"parent_id": self.strand_id, "prog": None}) if child.free]
        return min(dues) if dues else REAP_FALLBACK_NAP + 1

    # -- semaphores ------------------------------------------------------------------------

    def _semaphore(self, name: str) -> str:
        if name not in self.semaphore_names:
            raise EngineBug(f"BUG: {self.prog_name} declares no semaphore {name!r}")
        return name

    def is_set(self, name: str) -> bool:
        return self._context.snapshot.is_set(self._semaphore(name))

    def set_at(self, name: str) -> datetime | None:
        return self._context.snapshot.set_at(self._semaphore(name))

    async def incr(self, name: str) -> uuid.UUID | None:
        """Set a semaphore on our own strand without waking it (our nap stands)."""
        return await self._context.snapshot.incr(self._semaphore(name))

    async def decr(self, name: str) -> None:
        """Clear the rows of `name` this step saw; later signals survive."""
        await self._context.snapshot.decr(self._semaphore(name))

    # -- the destroy protocol ----------------------------------------------------------------

    async def before_destroy(self) -> None:
        """Hook: runs once when `destroy` is first seen, before the prog turns to destroying."""

    async def hop_destroy(self) -> NoReturn:
        """Turn to the `destroy` label, marking the strand `destroying`."""
        if "destroy" not in self.labels:
            raise EngineBug(f"BUG: {self.prog_name} has no destroy label")
        await self.incr("destroying")
        raise FlowControl(self._hop_outcome("destroy"))

    async def before_run(self) -> None:
        """Runs before every label: turns a prog whose `destroy` is set towards destruction."""
        if "destroy" not in self.semaphore_names:
            return
        if not self.is_set("destroying"):
            if self.label_name == "destroy":
                raise EngineBug("BUG: destroying semaphore not set on destroy label")
            if self.is_set("destroy"):
                await self.before_destroy()
                if "destroy" in self.labels:
                    await self.hop_destroy()
                self.pop("exiting early due to destroy semaphore")
        elif self.is_set("destroy") and len(self._context.strand.stack) > 1:
            self.pop("operation is cancelled due to explicitly requested destruction")

    # -- deadlines -------------------------------------------------------------------------

    def register_deadline(self, target: Label | None, seconds: float, *,
                          allow_extension: bool | int = False, page: bool = True) -> None:
        """Page if `target` (None: the end of this frame) is not reached in `seconds`.

        An existing deadline for the same target is only tightened, unless `allow_extension`
        (True: always rewrite; an int N: rewrite, but never beyond N s after the first one).
        """
        name = None if target is None else self._label_name(target)
        now = timefmt.now()
        new = now + timedelta(seconds=seconds)
        top = self.frame
        current = top.get("deadline_at")
        if not (current is None or top.get("deadline_target") != name or allow_extension
                or timefmt.read(current) > new):
            return
        if current is not None and top.get("deadline_target") != name:
            self._context.pages_to_resolve.append((self.prog_name, top.get("deadline_target")))
        self.frame_set("deadline_target", name)
        self.frame_set("deadline_page", page)
        # A rewritten deadline is armed again (the reference keeps a fired one silent).
        self.delete_from_stack("deadline_notified")
        if type(allow_extension) is int:
            start = timefmt.read(top["deadline_start"]) if top.get("deadline_start") else now
            self.frame_set("deadline_start", timefmt.write(start))
            new = min(new, start + timedelta(seconds=allow_extension))
        self.frame_set("deadline_at", timefmt.write(new))

    def unregister_deadline(self, target: Label | None) -> None:
        name = None if target is None else self._label_name(target)
        self._context.pages_to_resolve.append((self.prog_name, name))
        self.delete_from_stack("deadline_at", "deadline_target", "deadline_start",
                               "deadline_page")


def current_label() -> str | None:
    """`Prog.label` of the outermost label running in this task, or None outside progs."""
    return _current_label.get()
