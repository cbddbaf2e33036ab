"""Sched: an external scheduler program chooses the parameters of every execution.

A source of the shared driver loop (driver.py), which journals every point, requeues lost
executions with the same parameters, drains, and resumes after a crash. The protocol and the
program live in sched_protocol.py. The source keeps every slot busy plus one execution ahead
(so elastic allocations can grow), asks for parameters before recording outputs when both wait
(a free slot does not wait on a slow record), retries NOT_READY with backoff (sooner after
each record), and when the program fails stops asking: running executions finish, are fetched
and recorded. On resume the program is started again and fed the recorded history. Never
prints: events.

Features: an execution exports numbers by writing a file `features` into its run folder (a
JSON list, or numbers separated by spaces) or a stdout line `RUNAWAY_FEATURES: 1.0 2.5` (the
last one counts; the file wins). The record carries them as `features`, a string of numbers
separated by spaces, like the original's RUNAWAY_FEATURES text, and as `feature_values`, a
JSON list (null for NaN and infinities).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import uuid as uuidlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs

from liborchestra.driver import Driver, Source, Work
from liborchestra.engine import Engine
from liborchestra.execution import Execution, Result, State
from liborchestra.journal import Row
from liborchestra.node_keeper import read_bytes
from liborchestra.sched_protocol import (
    FINISHED,
    PARAMETERS,
    Response,
    SchedProtocolError,
    SchedulerProgram,
    decode,
    encode,
    split_parameters,
)
from liborchestra.transfer import OUTPUT_MARKER

__all__ = ["SchedSource", "SchedSettings", "SchedProtocolError", "SchedulerProgram", "Response",
           "encode", "decode", "split_parameters", "parse_features", "find_features",
           "SchedulerStderr", "PointRecorded", "FeaturesInvalid",
           "SchedulerFailed"]

FEATURES_PREFIX = "RUNAWAY_FEATURES:"
MAX_OUTPUT = 1 << 20  # bytes of stdout/stderr sent in a record (the tail)
BACKOFF = (0.1, 5.0)  # first and longest wait after NOT_READY_RESPONSE
LOST_STREAK = 3  # executions lost in a row (each after its requeues) that stop the search


def parse_features(text: str) -> tuple[float, ...]:
    """Numbers as a JSON list or separated by spaces/commas; ValueError otherwise."""
    text = text.strip()
    if text.startswith("["):
        values = json.loads(text)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"not a list of numbers: {text[:100]!r}")
        return tuple(float(v) for v in values)
    return tuple(float(word) for word in text.replace(",", " ").split())


def find_features(folder: Path, stdout: str) -> tuple[float, ...]:
    """The `features` file of a fetched run folder, else the last RUNAWAY_FEATURES: line."""
    features = read_bytes(os.path.join(folder, "features"))
    if features is not None:
        return parse_features(features.decode(errors="replace"))
    lines = [line.strip() for line in stdout.splitlines()
             if line.strip().startswith(FEATURES_PREFIX)]
    return parse_features(lines[-1][len(FEATURES_PREFIX):]) if lines else ()


# -- events (through Engine.emit; runaway renders them) ------------------------------------------

@attrs.frozen
class SchedulerStderr:
    line: str


@attrs.frozen
class PointRecorded:
    uuid: str
    parameters: str | tuple[str, ...]
    state: str
    ecode: int | None
    features: tuple[float, ...]


@attrs.frozen
class SchedulerFailed:
    """The search stops (the program failed, or executions keep being lost); the `running`
    executions finish and are fetched first."""

    message: str
    running: int


@attrs.frozen
class FeaturesInvalid:
    uuid: str
    message: str


# -- the source ----------------------------------------------------------------------------------

@attrs.frozen
class SchedSettings:
    script: Path
    output: Path  # sched folder: the journal, and one sub-folder per execution (its uuid)
    command: str
    code: Path | None = None
    duration: float | None = None
    ahead: int = 1  # executions asked for beyond the live slots (so allocations can grow)
    env: dict[str, str] = attrs.field(factory=dict)  # for the scheduler program


class SchedSource(Source):
    """The scheduler program decides every execution; its records are what `done` writes.
    On resume the program is started again and fed the recorded history (one
    RECORD_OUTPUT_REQUEST per execution recorded before) before it is asked for anything."""

    def __init__(self, engine: Engine, settings: SchedSettings) -> None:
        self.engine, self.settings = engine, settings
        self.program = SchedulerProgram(
            settings.command, env=settings.env, on_failure=self._failed, hungry=self._hungry,
            on_stderr=lambda line: engine.emit(SchedulerStderr(line)))  # type: ignore[arg-type]
        self.finished = False  # the scheduler said SEARCH_FINISHED_RESPONSE
        self.failure: str | None = None  # executions keep being lost
        self.driver: Driver | None = None
        self._asking = False  # a GET is on its way
        self._backing_off = False  # waiting after NOT_READY_RESPONSE
        self._replayed = False  # the history was fed to the program (GETs may come)
        self._lost_streak = 0
        self._recorded = anyio.Event()

    # -- Source ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self, driver: Driver) -> AsyncIterator[None]:
        self.driver = driver
        self.settings.output.mkdir(parents=True, exist_ok=True)
        (self.settings.output / OUTPUT_MARKER).touch()  # never shipped as code
        cancelled = False
        await self.program.start()
        async with anyio.create_task_group() as background:
            self.program.serve(background)
            try:
                for row in driver.journal.rows():  # the history, in order
                    if row.state in _RECORDED and self.program.error is None:
                        with contextlib.suppress(SchedProtocolError):
                            await self.program.record_output(**self._record(row, State(row.state)))
                self._replayed = True
                yield
            except anyio.get_cancelled_exc_class():
                cancelled = True  # second Ctrl-C: end the program now
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        if self.program.error is None and not cancelled:
                            await self.program.shutdown()
                    finally:
                        await self.program.close(0.5 if cancelled else 5.0
                                                 if self.program.error is None else 2.0)
                        background.cancel_scope.cancel()

    async def next(self, n: int) -> list[Work] | None:
        wait = BACKOFF[0]
        while not self._stopping():
            point = str(uuidlib.uuid4())
            try:
                self._asking = True
                response = await self.program.get_parameters(point)
                if response.kind == FINISHED:
                    self.finished = True
                    return None
                if response.kind == PARAMETERS:
                    argv = split_parameters(response.parameters)
                    shown = response.parameters if isinstance(response.parameters, str) \
                        else shlex.join(response.parameters)
                    return [Work(argv, shown, {"parameters": response.parameters}, point)]
            except SchedProtocolError as error:
                self.program.fail(str(error))
                return None
            finally:
                self._asking = False  # not ready, or between asks: records go first
            self._recorded = anyio.Event()  # not ready: again later, or after the next record
            self._backing_off = True  # meanwhile records go first
            with anyio.move_on_after(wait):
                await self._recorded.wait()
            self._backing_off = False
            wait = min(2 * wait, BACKOFF[1])
        return None

    def execution(self, row: Row, run_id: str) -> Execution:
        s = self.settings
        return Execution(script=s.script, args=row.argv, code=s.code, uuid=run_id,
                         output=s.output / row.uuid, duration=s.duration)

    def window(self, slots: int) -> int:
        return slots + self.settings.ahead

    async def done(self, row: Row, result: Result) -> float | None:
        self._lost_streak = self._lost_streak + 1 if result.state is State.LOST else 0
        if self._lost_streak >= LOST_STREAK and self.failure is None:
            self.failure = f"{self._lost_streak} executions in a row were lost: {result.message}"
            self._stop(self.failure)
        record = self._record(row, result.state, result.ecode)
        with open(self.settings.output / "sched.jsonl", "a") as log:
            log.write(json.dumps({k: v for k, v in record.items()
                                  if k not in ("stdout", "stderr")}) + "\n")
        if self.program.error is None:
            with contextlib.suppress(SchedProtocolError):  # the error is program.error
                await self.program.record_output(**record)
        self._recorded.set()
        features = tuple(v for v in record["feature_values"] if v is not None)
        self.engine.emit(PointRecorded(row.uuid, row.payload.get("parameters", row.label),  # type: ignore
                                       result.state.value, result.ecode, features))
        return features[0] if features else None

    # -- the program's side ------------------------------------------------------------------------

    def error(self) -> str | None:
        """Why the search stopped early (the program failed, or executions kept being lost)."""
        return self.program.error or self.failure

    def _stopping(self) -> bool:
        return self.program.error is not None or self.failure is not None or \
            (self.driver is not None and self.driver.draining)

    def _stop(self, message: str) -> None:
        if self.driver is not None:
            self.engine.emit(SchedulerFailed(message, self.driver.inflight))  # type: ignore
            self.driver.drain()

    def _failed(self) -> None:
        self._stop(self.program.error or "")

    def _hungry(self) -> bool:
        """A slot is free (or about to be) and its GET is coming: records wait for it."""
        driver = self.driver
        if not self._replayed or self.finished or self._backing_off or self._stopping():
            return False
        return self._asking or driver.inflight < self.window(self.engine.slots.total())

    def _record(self, row: Row, state: State, ecode: int | None = None) -> dict:
        folder = self.settings.output / row.uuid
        stdout, stderr = _tail(folder / "stdout"), _tail(folder / "stderr")
        try:
            features = find_features(folder, stdout) if folder.is_dir() else ()
        except ValueError as error:
            self.engine.emit(FeaturesInvalid(row.uuid, str(error)))  # type: ignore[arg-type]
            features = ()
        return {"uuid": row.uuid, "parameters": row.payload.get("parameters", row.label),
                "stdout": stdout, "stderr": stderr,
                "ecode": ecode if ecode is not None else row.ecode,
                "features": " ".join(map(repr, features)), "path": str(folder),
                "state": state.value,
                "feature_values": [v if math.isfinite(v) else None for v in features]}


_RECORDED = (State.COMPLETED.value, State.FAILED.value, State.LOST.value, State.CANCELLED.value)


def _tail(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - MAX_OUTPUT))
        return f.read().decode(errors="replace")
