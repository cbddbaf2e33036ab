"""Sched: an external scheduler program chooses the parameters of every execution.

The protocol and the program live in sched_protocol.py. The driver keeps every slot busy plus
one execution ahead (so elastic allocations can grow), asks for parameters before recording
outputs when both wait (a free slot does not wait on a slow record), retries NOT_READY with
backoff (sooner after each record), requeues executions lost to the infrastructure with the
same parameters (`crash_limit` times), and when the program fails or on `drain()` stops asking
and lets running executions finish, be fetched and recorded. Never prints: events.

Features: an execution exports numbers by writing a file `features` into its run folder (a
JSON list, or numbers separated by spaces) or a stdout line `RUNAWAY_FEATURES: 1.0 2.5` (the
last one counts; the file wins). The record carries them as `features`, a string of numbers
separated by spaces, like the original's RUNAWAY_FEATURES text, and as `feature_values`, a
JSON list (null for NaN and infinities).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid as uuidlib
from pathlib import Path

import anyio
import attrs

from liborchestra.engine import Engine
from liborchestra.events import ExecutionStarted
from liborchestra.execution import Execution, Result, State
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

__all__ = ["Sched", "SchedSettings", "SchedProtocolError", "SchedulerProgram", "Response",
           "encode", "decode", "split_parameters", "parse_features", "find_features",
           "SchedulerStderr", "PointRecorded", "PointRequeued", "FeaturesInvalid",
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
    if (folder / "features").is_file():
        return parse_features((folder / "features").read_text(errors="replace"))
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
class PointRequeued:
    uuid: str
    attempt: int
    message: str


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


# -- the driver ----------------------------------------------------------------------------------

@attrs.frozen
class SchedSettings:
    script: Path
    output: Path  # sched folder: one sub-folder per execution, named by its uuid
    command: str
    code: Path | None = None
    crash_limit: int = 3
    duration: float | None = None
    ahead: int = 1  # executions asked for beyond the live slots (so allocations can grow)
    env: dict[str, str] = attrs.field(factory=dict)  # for the scheduler program


class Sched:
    def __init__(self, engine: Engine, settings: SchedSettings) -> None:
        self.engine, self.settings = engine, settings
        self.program = SchedulerProgram(
            settings.command, env=settings.env, on_failure=self._failed, hungry=self._hungry,
            on_stderr=lambda line: engine.emit(SchedulerStderr(line)))  # type: ignore[arg-type]
        self.counts: dict[str, int] = {}
        self.finished = False  # the scheduler said SEARCH_FINISHED_RESPONSE
        self.failure: str | None = None  # executions keep being lost
        self._draining = False
        self._inflight = 0
        self._feeding = False  # the feed loop runs and is not backing off
        self._lost_streak = 0
        self._wake = anyio.Event()
        self._recorded = anyio.Event()
        self._waiting: dict[str, asyncio.Future[Result]] = {}  # run id -> not started yet
        self._dropped: set[str] = set()  # run ids cancelled by drain()
        engine.listeners.append(self._on_event)

    def drain(self) -> None:
        """Ask for no more parameters; running executions finish, are fetched and recorded;
        those still waiting for a slot are cancelled (and recorded as cancelled)."""
        self._draining = True
        for run_id, future in self._waiting.items():
            self._dropped.add(run_id)
            future.cancel()
        self._poke()

    def _on_event(self, event: object) -> None:
        if isinstance(event, ExecutionStarted):
            self._waiting.pop(event.uuid, None)
        self._poke()

    async def run(self) -> dict[str, int]:
        """Until the search finishes (or drain, or failure); counts of states. Raises
        SchedProtocolError after draining when the program failed."""
        self.settings.output.mkdir(parents=True, exist_ok=True)
        (self.settings.output / OUTPUT_MARKER).touch()  # never shipped as code
        grace = 5.0
        await self.program.start()
        async with anyio.create_task_group() as background:
            self.program.serve(background)
            try:
                async with anyio.create_task_group() as executions:
                    await self._feed(executions)
                if self.program.error is None:
                    await self.program.shutdown()
            except anyio.get_cancelled_exc_class():
                grace = 0.5  # cancelled (second Ctrl-C): end the program now
                raise
            finally:
                await self.program.close(grace if self.program.error is None else 2)
                background.cancel_scope.cancel()
        if self.program.error or self.failure:
            raise SchedProtocolError(self.program.error or self.failure)
        return self.counts

    def _stopping(self) -> bool:
        return self._draining or self.program.error is not None or self.failure is not None

    def _poke(self) -> None:
        self._wake.set()

    def _failed(self) -> None:
        self._poke()
        self.engine.emit(SchedulerFailed(self.program.error or "", self._inflight))  # type: ignore

    def _hungry(self) -> bool:
        """A slot is free (or about to be) and its GET is coming: records wait for it."""
        return self._feeding and not self._stopping() and \
            self._inflight < self.engine.slots.total() + self.settings.ahead

    async def _feed(self, tg: anyio.abc.TaskGroup) -> None:
        self._feeding = True
        try:
            while not self._stopping():
                while not self._hungry() and not self._stopping():
                    self._wake = anyio.Event()
                    with anyio.move_on_after(1):
                        await self._wake.wait()
                if self._stopping():
                    return
                point = str(uuidlib.uuid4())
                try:
                    parameters = await self._ask(point)
                    if parameters is None or self._draining:
                        return
                    argv = split_parameters(parameters)
                except SchedProtocolError as error:
                    self.program.fail(str(error))
                    return
                self._inflight += 1
                tg.start_soon(self._one, point, parameters, argv)
        finally:
            self._feeding = False

    async def _ask(self, point: str) -> str | tuple[str, ...] | None:
        wait = BACKOFF[0]
        while not self._stopping():
            response = await self.program.get_parameters(point)
            if response.kind == FINISHED:
                self.finished = True
                return None
            if response.kind == PARAMETERS:
                return response.parameters
            self._recorded = anyio.Event()  # not ready: retry later, or after the next record
            self._feeding = False  # meanwhile records go first
            with anyio.move_on_after(wait):
                await self._recorded.wait()
            self._feeding = True
            wait = min(2 * wait, BACKOFF[1])
        return None

    async def _one(self, point: str, parameters: str | tuple[str, ...],
                   argv: tuple[str, ...]) -> None:
        s = self.settings
        try:
            for attempt in range(s.crash_limit + 1):
                run_id = point if attempt == 0 else f"{point}.{attempt}"
                execution = Execution(script=s.script, args=argv, code=s.code, uuid=run_id,
                                      output=s.output / point, duration=s.duration)
                result = await self._submit(execution)
                if result.state is not State.LOST or attempt == s.crash_limit:
                    break
                self.engine.emit(PointRequeued(point, attempt + 1, result.message))  # type: ignore
        finally:
            self._inflight -= 1  # the slot is free: ask for its next point while we record
            self._poke()
        await self._record(point, parameters, result)

    async def _submit(self, execution: Execution) -> Result:
        future = self._waiting[execution.uuid] = self.engine.submit(execution)
        try:
            return await future
        except asyncio.CancelledError:
            if execution.uuid not in self._dropped:
                raise
            return Result(execution, State.CANCELLED, message="drained before it started")
        finally:
            self._waiting.pop(execution.uuid, None)

    async def _record(self, point: str, parameters: str | tuple[str, ...],
                      result: Result) -> None:
        state = result.state.value
        self.counts[state] = self.counts.get(state, 0) + 1
        self._lost_streak = self._lost_streak + 1 if result.state is State.LOST else 0
        if self._lost_streak >= LOST_STREAK:
            self.failure = f"{self._lost_streak} executions in a row were lost: {result.message}"
            self.engine.emit(SchedulerFailed(self.failure, self._inflight))  # type: ignore
        folder = self.settings.output / point
        stdout, stderr = _tail(folder / "stdout"), _tail(folder / "stderr")
        try:
            features = find_features(folder, stdout)
        except ValueError as error:
            self.engine.emit(FeaturesInvalid(point, str(error)))  # type: ignore[arg-type]
            features = ()
        record = {"uuid": point, "parameters": parameters, "stdout": stdout, "stderr": stderr,
                  "ecode": result.ecode, "features": " ".join(map(repr, features)),
                  "path": str(folder), "state": state,
                  "feature_values": [v if math.isfinite(v) else None for v in features]}
        with open(self.settings.output / "sched.jsonl", "a") as log:
            log.write(json.dumps({k: v for k, v in record.items()
                                  if k not in ("stdout", "stderr")}) + "\n")
        if self.program.error is None:
            with contextlib.suppress(SchedProtocolError):  # the error is program.error
                await self.program.record_output(**record)
        self._recorded.set()
        self.engine.emit(PointRecorded(point, parameters, state, result.ecode,  # type: ignore
                                       features))


def _tail(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - MAX_OUTPUT))
        return f.read().decode(errors="replace")
