"""The search: a sampler as a source of the shared driver loop (liborchestra.driver), over
the shared search store (store.py).

Each time a slot frees, the driver asks `next`, which asks the sampler: no batch barrier.
Before every ask the sampler is brought up to date with the store (trials and results of every
driver, replayed in their original order), under the store's ask lock, so drivers never
propose the same trial. The driver's own journal (`search/NAME/journal.sqlite`) lets it
resume and recover its executions; the store says which trials are whose.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs

from liborchestra.driver import Driver, Source, Work
from liborchestra.engine import Engine
from liborchestra.execution import Execution, Result, State
from liborchestra.journal import Row
from parasearch.arguments import Template
from parasearch.objective import read_objective
from parasearch.samplers import create_sampler
from parasearch.samplers.base import PENDING, Sampler, SearchExhausted
from parasearch.space import Space
from parasearch.store import COMPLETED, FAILED, LOST, RESERVED, Store, StoredTrial

log = logging.getLogger(__name__)


@attrs.frozen
class SearchSettings:
    script: Path
    output: Path  # this driver's folder: its journal, one sub-folder per run
    template: Template
    space: Space
    algo: str = "random"
    n: int = 100  # completed trials (of every driver) that end the search
    seed: int = 0
    maximize: bool = False
    parallel: int | None = None  # at most this many trials in flight (default: the slots)
    max_broken: int = 10
    code: Path | None = None
    duration: float | None = None
    lease: float = 60.0  # seconds a trial stays reserved without a heartbeat


@attrs.frozen
class TrialRecorded:
    """A trial ended (an event): its objective, or why it has none, and the best so far."""

    uuid: str
    params: dict
    state: str
    value: float | None
    problem: str
    best: float | None
    kept: bool  # False: another driver had taken the trial over; this result was ignored


class SearchSource(Source):
    def __init__(self, engine: Engine, settings: SearchSettings, store: Store,
                 driver_id: str) -> None:
        self.engine, self.settings, self.store, self.me = engine, settings, store, driver_id
        self.sampler: Sampler = create_sampler(settings.algo, settings.space, seed=settings.seed,
                                               maximize=settings.maximize)
        self.driver: Driver | None = None
        self.exhausted = False
        self.failure: str | None = None
        self._tells = 0  # results applied to the sampler, in the store's order
        self._known: dict[int, StoredTrial] = {}  # number -> latest view of the trial
        self._counts: Counter[str] = Counter()  # of the known trials, by state
        self._untold: dict[int, StoredTrial] = {}  # results known, not yet told the sampler
        self._mine: set[int] = set()  # trials this driver reserved in this life
        self._next_takeover = 0.0  # when to look for expired leases again (monotonic)

    # -- Source ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self, driver: Driver) -> AsyncIterator[None]:
        self.driver = driver
        self.refresh()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                with contextlib.suppress(Exception):  # others may take over what is left
                    self.store.release(self.me)

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.settings.lease / 3)
            try:
                self.store.heartbeat(self.me, self.settings.lease)
            except Exception as error:  # a store that blinks: the next beat may work
                log.warning("heartbeat failed: %s", error)

    async def next(self, n: int) -> list[Work] | None:
        if self.exhausted or self.failure:
            return None
        with self.store.asking() as db:
            self._apply(self._news(db))
            completed = self.completed()
            if completed >= self.settings.n:
                return None
            taken = []
            if time.monotonic() >= self._next_takeover:  # leases expire on their own clock
                self._next_takeover = time.monotonic() + self.settings.lease / 4
                taken = self.store.take_over(db, self.me, self.settings.lease)
            work = [self._work(t.number, t.params) for t in taken]
            reserved = self._counts[RESERVED]
            for _ in range(max(0, min(n - len(work), self.settings.n - completed - reserved))):
                try:
                    trial = self.sampler.ask()
                except SearchExhausted:
                    self.exhausted = True
                    break
                item = self._work(trial.id, trial.params)
                self.store.reserve(db, trial.id, item.payload["params"], self._tells, self.me,
                                   self.settings.lease, item.uuid)
                work.append(item)
        for item in work:
            self._mine.add(item.payload["number"])
        if not work and self.exhausted and reserved == 0:
            return None
        return work  # [] while other drivers' trials may still fail and need replacing

    async def claim(self, row: Row) -> bool:
        number = row.payload["number"]
        if number in self._mine:
            return True
        # a row of an earlier life of this driver: run it only if the trial is still ours
        self._mine.add(number)
        return self.store.renew(number, self.me, self.settings.lease, row.uuid)

    def execution(self, row: Row, run_id: str) -> Execution:
        s = self.settings
        return Execution(script=s.script, args=row.argv, code=s.code, uuid=run_id,
                         output=s.output / row.uuid, duration=s.duration)

    def window(self, slots: int) -> int:
        return self.settings.parallel if self.settings.parallel is not None else max(1, slots)

    async def done(self, row: Row, result: Result) -> float | None:
        journal = self.driver.journal
        value, metrics, problem = None, {}, result.message
        state = {State.COMPLETED: COMPLETED, State.FAILED: FAILED}.get(result.state, LOST)
        if result.state is State.COMPLETED:
            objective = read_objective(self.execution(row, row.uuid).output)
            value, metrics, problem = objective.value, objective.metrics, objective.problem
            if value is None:
                state = FAILED
                journal.finished(row.seq, State.FAILED.value, result.ecode, problem,
                                 recorded=False)
        elif result.state is State.FAILED:
            problem = f"exit {result.ecode}" if result.ecode is not None else result.message
        kept = self.record(row.payload["number"], state, value, metrics, problem, result.node,
                           row.started)
        if not kept:
            journal.finished(row.seq, State.CANCELLED.value, result.ecode,
                             "taken over by another driver: this result is ignored",
                             recorded=False)
        broken = self._counts[FAILED]
        if broken >= self.settings.max_broken and self.failure is None:
            self.failure = (f"{broken} trials broken (--max-broken {self.settings.max_broken});"
                            f" last: {problem}")
            self.driver.drain()
        best = self.sampler.best
        self.engine.emit(TrialRecorded(row.uuid, row.payload.get("params", {}), state,  # type: ignore[arg-type]
                                       value, problem, best.value if best else None, kept))
        return value if kept else None

    # -- the shared history ------------------------------------------------------------------------

    def refresh(self) -> None:
        self._apply(self._news(None))

    def record(self, number: int, state: str, value: float | None, metrics: dict,
               problem: str, node: str | None, started: float | None) -> bool:
        """Store a trial's result and catch up with the store in the same transaction;
        False when the trial was taken over (the result is ignored)."""
        kept, news = self.store.record(number, self.me, state, value, metrics, problem, node,
                                       started, since_number=len(self._known),
                                       told_since=self._tells)
        self._apply(news)
        return kept

    def _news(self, db) -> list[StoredTrial]:
        """What changed since this driver last looked: new trials and new results (a
        take-over changes only who holds a trial, which the counts do not need)."""
        return self.store.trials(db, since_number=len(self._known), told_since=self._tells)

    def completed(self) -> int:
        return self._counts[COMPLETED]

    def _apply(self, stored: list[StoredTrial]) -> None:
        """Bring the sampler up to date: new trials adopted in their order, each after the
        results known when it was asked; then the newer results, in their order."""
        for trial in stored:
            old = self._known.get(trial.number)
            if old is not None:
                self._counts[old.state] -= 1
            self._counts[trial.state] += 1
            self._known[trial.number] = trial
            if trial.told is not None and trial.told >= self._tells:
                self._untold[trial.number] = trial
        if not self._untold and len(self.sampler.records) == len(self._known):
            return
        pending_tells = iter(sorted(self._untold.values(), key=lambda t: t.told))
        nxt = next(pending_tells, None)
        for number in range(len(self.sampler.records), len(self._known)):
            trial = self._known.get(number)
            if trial is None:
                break  # a gap (a number being written right now): the rest waits
            while nxt is not None and nxt.told < trial.asked_after and nxt.number < number:
                self._tell(nxt)
                nxt = next(pending_tells, None)
            self.sampler.adopt(trial.params)
        while nxt is not None and nxt.number < len(self.sampler.records):
            self._tell(nxt)
            nxt = next(pending_tells, None)

    def _tell(self, trial: StoredTrial) -> None:
        if self.sampler.records[trial.number].state == PENDING:
            self.sampler.tell(trial.number, trial.value if trial.state == COMPLETED else None)
        self._tells = max(self._tells, trial.told + 1)
        del self._untold[trial.number]

    def _work(self, number: int, params: dict) -> Work:
        params = {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}
        argv = self.settings.template.render(params)
        return Work(argv, " ".join(argv), {"params": params, "number": number},
                    str(uuidlib.uuid4()))
