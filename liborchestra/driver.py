"""The journaled driver loop that every tool shares: batch, sched, search, campaign runs.

A tool plugs in a `Source`: what to run next (`next`), how a journal row becomes an
`Execution` (`execution`) and what to record when it ends (`done`). The `Driver` owns the rest,
written once:

- the lease on the journal (one driver per journal, taken atomically);
- recovery of executions a dead driver left in flight, *alongside* new work: a run that
  finished while the driver was away is fetched and recorded, one still running is waited
  for, one whose node cannot be reached is retried for a while, then fenced off (its run id
  is retired, so if it reports later nothing records it) and run again;
- recording again results whose recording a crash interrupted;
- the in-flight window, retries of failed executions and requeues of lost ones;
- the canary (the first N executions of this driver, judged before the rest starts);
- drain (nothing new starts; running executions finish and are recorded) and cancel
  (interrupted executions go back to the queue);
- journal writes for every placement and allocation, which the progress views read. They are
  committed in groups: before anything leaves for a node (the engine's barrier: a run's
  placement before its order to start, a final state before its run folder is removed), or
  within COMMIT_DELAY.

Example: a source that runs `train.sh --seed=K` for K = 0..9 and records each exit code::

    class Seeds(Source):
        def __init__(self):
            self.left = list(range(10))

        async def next(self, n):
            if not self.left:
                return None  # nothing more, ever
            take, self.left = self.left[:n], self.left[n:]
            return [Work((f"--seed={k}",), f"seed {k}", {"seed": k}) for k in take]

        def execution(self, row, run_id):
            return Execution(script=Path("train.sh"), args=row.argv, uuid=run_id,
                             output=Path("out") / row.uuid)

        async def done(self, row, result):
            print(row.payload["seed"], result.ecode)

    async with Engine(profile) as engine:
        journal = Journal.create(Path("out/journal.sqlite"), {})
        with journal.lease():
            await Driver(engine, journal, Seeds()).run()
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import uuid as uuidlib
from collections.abc import AsyncIterator

import anyio
import attrs

from liborchestra import events
from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError, SSHError
from liborchestra.execution import Execution, Result, State
from liborchestra.journal import Journal, Row

log = logging.getLogger(__name__)
RECOVER_CONCURRENCY = 32  # recoveries at once (each holds a channel while it waits)
RECOVER_BACKOFF = (2.0, 30.0)  # first and longest wait between tries on an unreachable node
COMMIT_DELAY = 0.1  # seconds a final state may wait for its commit (see _commit_soon)


class CanaryFailed(OrchestraError):
    """The first executions failed: the rest was not started."""


@attrs.frozen
class Work:
    """A new execution a source decided: argv, a label for people, the tool's own payload."""

    argv: tuple[str, ...]
    label: str = ""
    payload: dict = attrs.field(factory=dict)
    uuid: str = attrs.field(factory=lambda: str(uuidlib.uuid4()))


class Source(abc.ABC):
    """What a tool plugs into the driver. Only `execution` is required."""

    @contextlib.asynccontextmanager
    async def open(self, driver: Driver) -> AsyncIterator[None]:
        """Held while the driver runs: start a program, replay the journal's history... and
        end it all on every exit path (a cancellation is raised at the `yield`)."""
        yield

    async def next(self, n: int) -> list[Work] | None:
        """Up to `n` new executions to run now; [] when there is nothing yet (the driver asks
        again after the next result, or soon); None when there will be nothing more. The
        default: every execution is already in the journal (a sweep)."""
        return None

    @abc.abstractmethod
    def execution(self, row: Row, run_id: str) -> Execution:
        """The execution of a journal row, as run `run_id` (a new id for every attempt)."""

    async def done(self, row: Row, result: Result) -> float | None:
        """Record a final result (exactly the tool's business). May be called again for the
        same row after a crash: make it idempotent. Returns the objective value, if any."""
        return None

    async def claim(self, row: Row) -> bool:
        """Whether this driver may run `row` now (a queued or requeued one included): False
        when the work belongs to another driver by now (a shared search store took it over)."""
        return True

    def window(self, slots: int) -> int:
        """How many executions to keep in flight for `slots` live slots: enough ahead that
        an elastic allocation sees demand and no slot idles."""
        return max(16, 2 * slots)


@attrs.frozen
class Policy:
    """What the driver does with failures; saved in the journal's meta and read back."""

    retries: int = 0  # re-runs of an execution that failed (exit code != 0)
    crash_limit: int = 3  # requeues of an execution lost to the infrastructure
    canary: int = 0  # executions run and judged first
    recover_patience: float = 300.0  # seconds to keep trying an unreachable node on resume

    def to_meta(self) -> dict[str, object]:
        return attrs.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, object]) -> Policy:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names and v is not None})


# -- events (through Engine.emit) -----------------------------------------------------------------

@attrs.frozen
class RecoveryWaiting:
    """A run left by an earlier driver is on a node that cannot be reached; trying again."""

    uuid: str
    node: str
    message: str


@attrs.frozen
class RunFenced:
    """A run left on an unreachable node was given up: its execution runs again, and
    whatever that run reports later is ignored."""

    uuid: str
    run: str
    node: str


@attrs.frozen
class ExecutionRequeued:
    """An execution was lost to the infrastructure and runs again (`attempt`-th requeue)."""

    uuid: str
    attempt: int
    message: str


@attrs.frozen
class RecordFailed:
    """The tool could not record a result (the execution's state is kept)."""

    uuid: str
    message: str


class Driver:
    def __init__(self, engine: Engine, journal: Journal, source: Source,
                 policy: Policy = Policy()) -> None:
        self.engine, self.journal, self.source, self.policy = engine, journal, source, policy
        self.draining = False
        self.cancelled = False  # the run was cancelled (not drained): sources end at once
        self._running: dict[str, Row] = {}  # run id -> row, for placement events
        self._inflight = 0
        self._changed = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._asking: anyio.CancelScope | None = None
        self._canary_rows: list[int] = []
        self._commit_due: asyncio.TimerHandle | None = None
        engine.listeners.append(self._on_event)
        engine.barriers.append(journal.commit)  # the runs' placements, before they start

    # -- control (the CLIs' signals and the web page call these) ---------------------------------

    def drain(self) -> None:
        """Start nothing new; running executions finish and are recorded."""
        self.draining = True
        self.engine.drain()
        if self._asking is not None:
            self._asking.cancel()
        self._poke()

    def cancel(self) -> None:
        """Stop now: running executions are killed and go back to the queue."""
        self.draining = True
        if self._scope is not None:
            self._scope.cancel()

    def status(self) -> dict[str, int]:
        return self.journal.counts()

    @property
    def inflight(self) -> int:
        """Executions handed to the engine and not yet recorded."""
        return self._inflight

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> dict[str, int]:
        """Recover what an earlier driver left, run the canary, then everything else; returns
        the journal's counts. Raises CanaryFailed when the canary fails."""
        stale = self.journal.live_allocations()  # before this engine grants any
        names = list(self.journal.meta().get("scheduler_names") or [])
        mine = self.engine.job_names()
        if mine:  # so that a resume can sweep what a killed request left under these names
            self.journal.set_meta("scheduler_names", [*names, *mine][-20:])
        with anyio.CancelScope() as self._scope:
            try:
                async with self.source.open(self), anyio.create_task_group() as tg:
                    # what the earlier driver left, read before this one starts anything: its
                    # own runs are in flight too, and must not be recovered as the earlier's
                    tg.start_soon(self._recover_all, self.journal.unrecorded(),
                                  self.journal.in_flight(), stale, names)
                    if self.policy.canary and not self.journal.meta().get("canary_passed"):
                        await self._feed(limit=self.policy.canary, started=self._canary_rows)
                        self._judge_canary()
                    await self._feed()
            except anyio.get_cancelled_exc_class():
                self.cancelled = True
                raise
            finally:
                if self._commit_due is not None:
                    self._commit_due.cancel()
                    self._commit_due = None
                self.journal.commit()
        return self.journal.counts()

    def _window(self) -> int:
        return self.source.window(self.engine.slots.total())

    def _poke(self) -> None:
        self._changed.set()

    async def _changed_or(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._changed.wait()
        self._changed = anyio.Event()

    async def _feed(self, limit: int | None = None, started: list[int] | None = None) -> None:
        """Page through the journal's queued rows, then ask the source for more, keeping the
        window full; returns when all started executions ended (or after draining)."""
        count, after, exhausted = 0, 0, False
        async with anyio.create_task_group() as tg:
            while not self.draining and (limit is None or count < limit):
                room = self._window() - self._inflight
                if room <= 0:
                    self.journal.commit()  # the `started` of runs still waiting for a slot
                    await self._changed_or(1.0)
                    continue
                if limit is not None:
                    room = min(room, limit - count)
                rows = self.journal.pending(after, room)
                if not rows:
                    if exhausted:
                        break
                    work = await self._ask(room)
                    if work is None:
                        exhausted = True
                    elif not work:
                        await self._changed_or(1.0)
                    else:
                        self.journal.add((w.uuid, w.argv, w.label, w.payload) for w in work)
                    continue
                after = rows[-1].seq
                for row in rows:
                    count += 1
                    if started is not None:
                        started.append(row.seq)
                    self._start(tg, row)

    async def _ask(self, n: int) -> list[Work] | None:
        with anyio.CancelScope() as self._asking:
            try:
                return await self.source.next(n)
            finally:
                self._asking = None
        return None  # drained while asking

    def _start(self, tg: anyio.abc.TaskGroup, row: Row) -> None:
        self._inflight += 1
        tg.start_soon(self._one, row)

    async def _one(self, row: Row) -> None:
        """Run a row to its final state: retries, requeues, then the record."""
        attempts, lost = row.attempts, row.lost
        holding = True  # counted in the window until its result is in (not while recorded)
        try:
            if not await self.source.claim(row):
                self.journal.finished(row.seq, State.CANCELLED.value, None,
                                      "taken over by another driver")
                return
            while True:
                run_id = row.uuid if attempts == 0 else f"{row.uuid}.{attempts}"
                execution = self.source.execution(row, run_id)
                self.journal.started(row.seq, run_id, commit=False)  # the barrier commits it
                attempts += 1
                self._running[run_id] = row
                try:
                    result = await self.engine.submit(execution)  # its own task: a cancel
                    # is journaled at once, not after the kill's grace
                finally:
                    self._running.pop(run_id, None)
                if result.state is State.CANCELLED and self.draining:
                    self.journal.finished(row.seq, State.QUEUED.value, None, "drained")
                    return
                if result.state is State.LOST and lost < self.policy.crash_limit:
                    lost += 1
                    self.engine.emit(ExecutionRequeued(row.uuid, lost, result.message))  # type: ignore[arg-type]
                    self.journal.finished(row.seq, State.SUBMITTED.value, None, result.message,
                                          lost=True)
                    continue
                if result.state is State.FAILED and attempts <= self.policy.retries:
                    self.journal.finished(row.seq, State.SUBMITTED.value, result.ecode,
                                          "retrying")
                    continue
                holding = False
                self._leave_window()  # its slot is free: the next one may start while it records
                await self._record(row, result)
                return
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):  # interrupted: runs again on resume
                self.journal.finished(row.seq, State.QUEUED.value, None, "interrupted")
            raise
        finally:
            if holding:
                self._leave_window()

    def _leave_window(self) -> None:
        self._inflight -= 1
        self._poke()

    async def _record(self, row: Row, result: Result) -> None:
        """Final state first (not yet recorded), then the tool's record, then `recorded`."""
        state = result.state if result.state.final else State.LOST
        fresh = self.journal.finished(row.seq, state.value, result.ecode, result.message,
                                      lost=state is State.LOST, recorded=False,
                                      commit=False)  # before its run folder goes: the barrier
        self._commit_soon()
        value = None
        try:
            value = await self.source.done(fresh, result)
        except Exception as error:  # a broken record must not take the other executions down
            log.exception("recording %s failed", row.uuid)
            self.engine.emit(RecordFailed(row.uuid, f"{type(error).__name__}: {error}"))  # type: ignore[arg-type]
        self.journal.recorded(row.seq, value, commit=False)
        self._commit_soon()

    def _commit_soon(self) -> None:
        """Commit the journal's waiting writes within COMMIT_DELAY, if no barrier does first:
        one commit for the many executions that end meanwhile, each a few tenths of a
        millisecond of the driver's time; other processes (`status`) see them late by that."""
        if self._commit_due is None:
            self._commit_due = asyncio.get_running_loop().call_later(COMMIT_DELAY,
                                                                     self._commit_now)

    def _commit_now(self) -> None:
        self._commit_due = None
        self.journal.commit()

    def _judge_canary(self) -> None:
        rows = [self.journal.get(seq) for seq in self._canary_rows]
        failed = [r for r in rows if r.state in (State.FAILED.value, State.LOST.value)]
        if failed and not self.draining:
            raise CanaryFailed(_canary_message(failed, self.source))
        if not self.draining:
            self.journal.set_meta("canary_passed", True)

    # -- recovery --------------------------------------------------------------------------------

    async def _recover_all(self, unrecorded: list[Row], rows: list[Row], stale: list[str],
                           names: list[str]) -> None:
        """Beside new work: record again what a crash left unrecorded, recover or re-run what
        an earlier driver left in flight (`rows`), then release the allocations it left
        behind (and any request of it still pending under its job name)."""
        for row in unrecorded:
            execution = self.source.execution(row, row.run or row.uuid)
            result = Result(execution, State(row.state), ecode=row.ecode, node=row.node,
                            slot=row.slot, output=execution.output, message=row.message or "")
            await self._record(row, result)
        limiter = anyio.CapacityLimiter(RECOVER_CONCURRENCY)
        again: list[tuple[Row, str]] = []
        if rows:
            async with anyio.create_task_group() as tg:
                for row in rows:
                    tg.start_soon(self._recover, row, limiter, again)
        # Released before the re-runs wait for slots: on a full cluster they may need the very
        # nodes the earlier driver's allocations still hold.
        for allocation in stale:
            await self.engine.release_stale(allocation)
            self.journal.allocation(allocation, "released", "left by an earlier driver")
        for name in names:
            await self.engine.sweep_stale(name)
        async with anyio.create_task_group() as tg:
            for row, why in again:  # queued and started at once: the feed never sees it queued
                self.journal.finished(row.seq, State.QUEUED.value, None, why)
                if not self.draining:
                    self._start(tg, self.journal.get(row.seq))

    async def _recover(self, row: Row, limiter: anyio.CapacityLimiter,
                       again: list[tuple[Row, str]]) -> None:
        """Record what an earlier driver's run left, or keep it (in `again`) to run again."""
        result, fenced = None, False
        if row.state == State.RUNNING.value and row.run and row.node:
            async with limiter:
                result, fenced = await self._reattach(row)
        if result is not None and result.state is not State.LOST:
            await self._record(row, result)
            return
        again.append((row, "fenced off (node unreachable); requeued" if fenced
                      else "requeued on resume"))

    async def _reattach(self, row: Row) -> tuple[Result | None, bool]:
        """The run's result (None: nothing to recover) and whether it was fenced off."""
        execution = self.source.execution(row, row.run)
        deadline = anyio.current_time() + self.policy.recover_patience
        wait = RECOVER_BACKOFF[0]
        while True:
            try:
                return await self.engine.recover(execution, row.node, row.slot,
                                                 row.allocation), False
            except SSHError as error:
                if anyio.current_time() + wait > deadline or self.draining:
                    self.engine.emit(RunFenced(row.uuid, row.run, row.node))  # type: ignore[arg-type]
                    return None, True
                self.engine.emit(RecoveryWaiting(row.uuid, row.node, str(error)))  # type: ignore[arg-type]
                await anyio.sleep(wait)
                wait = min(2 * wait, RECOVER_BACKOFF[1])

    # -- events ----------------------------------------------------------------------------------

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.ExecutionStarted):
            row = self._running.get(event.uuid)
            if row is not None:
                self.journal.placed(row.seq, event.node, event.slot, event.allocation or None,
                                    event.digest or None, commit=False)  # see barriers
        elif isinstance(event, events.AllocationGranted):
            self.journal.allocation(event.allocation, "granted")
            self._poke()
        elif isinstance(event, events.AllocationReleased):
            self.journal.allocation(event.allocation, "released", event.reason)


def _canary_message(failed: list[Row], source: Source) -> str:
    lines = []
    for row in failed[:5]:
        output = source.execution(row, row.run or row.uuid).output
        stderr = output / "stderr" if output is not None else None
        tail = stderr.read_text(errors="replace").strip().splitlines()[-3:] \
            if stderr is not None and stderr.is_file() else []
        why = f"exit {row.ecode}" if row.state == "failed" else (row.message or "lost")
        lines.append(f"#{row.seq} [{row.label}] {why}" + (f": {' | '.join(tail)}" if tail else ""))
    return (f"canary: {len(failed)} of the first executions failed; the rest was not started. "
            + "; ".join(lines))

