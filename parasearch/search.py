"""The search: a sampler as a source of the shared driver loop (liborchestra.driver).

Each time a slot frees, the driver asks `next`, which asks the sampler: no batch barrier.
Every trial is a journal row (payload: its parameters, how many results the sampler had when
it was asked, and the order its own result was told), so a resumed search replays the asks
and tells in their original order and the sampler is back where it was; the driver recovers
the trials that were in flight. The journal is the search record: `search/NAME/search.sqlite`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import attrs

from liborchestra.driver import Driver, Source, Work
from liborchestra.engine import Engine
from liborchestra.execution import Execution, Result, State
from liborchestra.journal import Journal, Row
from parasearch.arguments import Template
from parasearch.objective import read_objective
from parasearch.samplers import create_sampler
from parasearch.samplers.base import PENDING, Sampler, SearchExhausted
from parasearch.space import Space

log = logging.getLogger(__name__)


@attrs.frozen
class SearchSettings:
    script: Path
    output: Path  # search folder: the record, one sub-folder per trial
    template: Template
    space: Space
    algo: str = "random"
    n: int = 100  # completed trials that end the search
    seed: int = 0
    maximize: bool = False
    parallel: int | None = None  # at most this many trials in flight (default: the slots)
    max_broken: int = 10
    code: Path | None = None
    duration: float | None = None


@attrs.frozen
class TrialRecorded:
    """A trial ended (an event): its objective, or why it has none, and the best so far."""

    uuid: str
    params: dict
    state: str
    value: float | None
    problem: str
    best: float | None


class SearchFailed(Exception):
    """Too many broken trials: the search stopped (running trials were drained)."""


class SearchSource(Source):
    def __init__(self, engine: Engine, settings: SearchSettings) -> None:
        self.engine, self.settings = engine, settings
        self.sampler: Sampler = create_sampler(settings.algo, settings.space, seed=settings.seed,
                                               maximize=settings.maximize)
        self.driver: Driver | None = None
        self.exhausted = False
        self.failure: str | None = None
        self._trial_of: dict[str, int] = {}  # row uuid -> sampler trial id
        self._told = 0
        self._broken: list[Row] = []

    # -- Source ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self, driver: Driver) -> AsyncIterator[None]:
        self.driver = driver
        self._replay(driver.journal)
        yield

    async def next(self, n: int) -> list[Work] | None:
        completed = self.completed()
        if completed >= self.settings.n or self.exhausted or self.failure:
            return None
        pending = sum(1 for r in self.sampler.records if r.state == PENDING)
        take = min(n, self.settings.n - completed - pending)
        work = []
        for _ in range(max(0, take)):
            try:
                trial = self.sampler.ask()
            except SearchExhausted:
                self.exhausted = True
                break
            work.append(self._work(trial.id, trial.params))
        if not work and self.exhausted and not pending:
            return None
        return work

    def execution(self, row: Row, run_id: str) -> Execution:
        s = self.settings
        return Execution(script=s.script, args=row.argv, code=s.code, uuid=run_id,
                         output=s.output / row.uuid, duration=s.duration)

    def window(self, slots: int) -> int:
        if self.settings.parallel is not None:
            return self.settings.parallel
        return max(1, slots)

    async def done(self, row: Row, result: Result) -> float | None:
        journal = self.driver.journal
        value, problem, state = None, result.message, result.state.value
        if result.state is State.COMPLETED:
            objective = read_objective(self.settings.output / row.uuid)
            value, problem = objective.value, objective.problem
            row.payload["metrics"] = objective.metrics
            if value is None:
                state = State.FAILED.value
                journal.finished(row.seq, state, result.ecode, problem, recorded=False)
        elif result.state is State.FAILED:
            problem = f"exit {result.ecode}" if result.ecode is not None else result.message
        trial = self._trial_of.get(row.uuid)
        if trial is not None and self.sampler.records[trial].state == PENDING:
            self.sampler.tell(trial, value)
            row.payload["order"] = self._told
            self._told += 1
        journal.update_payload(row.seq, row.payload)
        if state == State.FAILED.value:  # a lost trial (the infrastructure) is not broken
            self._broken.append(row)
            if len(self._broken) >= self.settings.max_broken and self.failure is None:
                self.failure = (f"{len(self._broken)} trials broken (--max-broken "
                                f"{self.settings.max_broken}); last: {problem}")
                self.driver.drain()
        best = self.sampler.best
        self.engine.emit(TrialRecorded(row.uuid, row.payload.get("params", {}), state,  # type: ignore[arg-type]
                                       value, problem, best.value if best else None))
        return value

    # -- the record ------------------------------------------------------------------------------

    def completed(self) -> int:
        return sum(1 for r in self.sampler.records if r.state == "complete")

    def broken(self) -> list[Row]:
        return list(self._broken)

    def _work(self, trial: int, params: dict) -> Work:
        argv = self.settings.template.render(params)
        work = Work(argv, " ".join(argv),
                    {"params": _plain(params), "trial": trial, "after": self._told})
        self._trial_of[work.uuid] = trial
        return work

    def _replay(self, journal: Journal) -> None:
        """Asks in their order (rows), each after the tells that preceded it (payload
        `after`), tells in theirs (payload `order`): the sampler as it was."""
        rows = journal.rows()
        tells = sorted((r for r in rows if "order" in r.payload), key=lambda r: r.payload["order"])
        told = 0
        for row in rows:
            while told < len(tells) and tells[told].payload["order"] < row.payload.get("after", 0):
                self._tell_replayed(tells[told])
                told += 1
            trial = self.sampler.adopt(row.payload["params"])
            self._trial_of[row.uuid] = trial.id
        for row in tells[told:]:
            self._tell_replayed(row)
        self._told = len(tells)
        self._broken = [r for r in rows if r.state == State.FAILED.value]

    def _tell_replayed(self, row: Row) -> None:
        trial = self._trial_of.get(row.uuid)
        if trial is not None:
            self.sampler.tell(trial, row.value if row.state == State.COMPLETED.value else None)


def _plain(params: dict) -> dict:
    return {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}
