"""Sched: an external scheduler program chooses the parameters of every execution.

The program (`bash -c COMMAND`, started locally in its own session so that Ctrl-C reaches only
us) speaks the JSON-lines protocol of the original runaway on its stdin/stdout: one object per
line, `{"KIND": {fields}}`, one request answered by one response, never two requests at once.

  runaway → scheduler   GET_PARAMETERS_REQUEST {uuid}
                        RECORD_OUTPUT_REQUEST {uuid, parameters, stdout, stderr, ecode,
                                               features, path, state, feature_values}
                        SHUTDOWN_REQUEST {}
  scheduler → runaway   GET_PARAMETERS_RESPONSE {parameters}   (a string split like a shell
                                               would, but never run by one; or a list: argv)
                        NOT_READY_RESPONSE {}     ask again later (with backoff)
                        SEARCH_FINISHED_RESPONSE {}   no more points (ours; not in the original)
                        RECORD_OUTPUT_RESPONSE {}, SHUTDOWN_RESPONSE {}
                        ERROR_RESPONSE {message}  fatal

`features` is a string as in the original (numbers separated by spaces); `feature_values` is
the same as a JSON list (null for NaN/inf). An execution exports them by writing a file
`features` into its run folder (JSON list or numbers) or a stdout line `RUNAWAY_FEATURES: 1 2`.

The driver keeps every slot busy plus one execution ahead (so allocations can grow), asks for
parameters before recording outputs when both wait (a free slot never waits on a slow record),
requeues executions lost to the infrastructure with the same parameters, and when the program
fails, or on `drain()`, stops asking and lets running executions finish, be fetched and recorded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import uuid as uuidlib
from pathlib import Path
from typing import Callable

import anyio
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution, Result, State

GET, RECORD, SHUTDOWN = "GET_PARAMETERS_REQUEST", "RECORD_OUTPUT_REQUEST", "SHUTDOWN_REQUEST"
PARAMETERS, NOT_READY, FINISHED = ("GET_PARAMETERS_RESPONSE", "NOT_READY_RESPONSE",
                                   "SEARCH_FINISHED_RESPONSE")
RECORDED, SHUT, ERROR = "RECORD_OUTPUT_RESPONSE", "SHUTDOWN_RESPONSE", "ERROR_RESPONSE"
RESPONSES = (PARAMETERS, NOT_READY, FINISHED, RECORDED, SHUT, ERROR)
FEATURES_PREFIX = "RUNAWAY_FEATURES:"
MAX_LINE = 16 << 20  # bytes of one response line
MAX_OUTPUT = 1 << 20  # bytes of stdout/stderr sent in a record (the tail)
BACKOFF = (0.1, 5.0)  # first and longest wait after NOT_READY_RESPONSE
LOST_STREAK = 3  # executions lost in a row (each after its requeues) that stop the search


class SchedProtocolError(OrchestraError):
    """The scheduler program failed, exited, or broke the protocol."""


@attrs.frozen
class Response:
    kind: str
    parameters: str | tuple[str, ...] | None = None
    message: str = ""


def encode(kind: str, **fields: object) -> bytes:
    return (json.dumps({kind: fields}) + "\n").encode()


def decode(line: bytes) -> Response:
    """One response line, validated; SchedProtocolError says what is wrong with it."""
    text = line.decode(errors="replace").strip()
    shown = text if len(text) <= 200 else text[:200] + "..."
    try:
        message = json.loads(text)
    except ValueError:
        raise SchedProtocolError(f"the scheduler sent invalid JSON: {shown!r} (one JSON object "
                                 "per line on stdout; diagnostics go to stderr)") from None
    if not isinstance(message, dict) or len(message) != 1:
        raise SchedProtocolError(f"the scheduler sent {shown!r}: expected one object with a "
                                 "single key, e.g. {\"NOT_READY_RESPONSE\": {}}")
    ((kind, body),) = message.items()
    if kind not in RESPONSES:
        raise SchedProtocolError(f"the scheduler sent an unknown message {kind!r} (known: "
                                 f"{', '.join(RESPONSES)})")
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise SchedProtocolError(f"the scheduler sent {shown!r}: the body of {kind} must be "
                                 "an object")
    if kind == PARAMETERS:
        value = body.get("parameters")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return Response(kind, parameters=tuple(value))
        if not isinstance(value, str):
            raise SchedProtocolError(f"the scheduler sent {shown!r}: {kind} needs "
                                     "\"parameters\": a string (or a list of strings)")
        return Response(kind, parameters=value)
    if kind == ERROR:
        return Response(kind, message=str(body.get("message", "")))
    return Response(kind)


def split_parameters(parameters: str | tuple[str, ...]) -> tuple[str, ...]:
    """The argv of a parameters string, split with shell quoting rules; never expanded."""
    if isinstance(parameters, tuple):
        return parameters
    try:
        return tuple(shlex.split(parameters))
    except ValueError as error:
        raise SchedProtocolError(f"the scheduler sent parameters that cannot be split into "
                                 f"arguments ({error}): {parameters!r}") from None


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
class FeaturesInvalid:
    uuid: str
    message: str


# -- the program ---------------------------------------------------------------------------------

class SchedulerProgram:
    """The running scheduler: request/response pairs one at a time, GETs served first."""

    def __init__(self, command: str, *, env: dict[str, str] | None = None,
                 on_stderr: Callable[[str], None] = lambda line: None,
                 on_failure: Callable[[], None] = lambda: None) -> None:
        self.command, self.env = command, env
        self.on_stderr, self.on_failure = on_stderr, on_failure
        self.error: str | None = None
        self._proc: anyio.abc.Process | None = None
        self._send, self._receive = anyio.create_memory_object_stream[Response | None](math.inf)
        self._turn = anyio.Condition()
        self._busy, self._urgent = False, 0
        self._expecting = self._closing = False

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        try:
            self._proc = await anyio.open_process(["bash", "-c", self.command], env=env,
                                                  start_new_session=True)
        except OSError as error:
            raise SchedProtocolError(f"cannot start the scheduler: {error}") from None
        tg.start_soon(self._read_stdout)
        tg.start_soon(self._read_stderr)
        tg.start_soon(self._watch)

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            self._send.send_nowait(None)  # wakes an exchange waiting for a response
            self.on_failure()

    async def get_parameters(self, uuid: str) -> Response:
        return await self._exchange(GET, {"uuid": uuid}, (PARAMETERS, NOT_READY, FINISHED),
                                    urgent=True)

    async def record_output(self, **fields: object) -> None:
        await self._exchange(RECORD, fields, (RECORDED,))

    async def shutdown(self, timeout: float = 60) -> None:
        """SHUTDOWN_REQUEST; a program that exits 0 instead of answering is fine too."""
        self._closing = True
        with anyio.move_on_after(timeout) as scope:
            try:
                await self._exchange(SHUTDOWN, {}, (SHUT,))
            except SchedProtocolError:
                with anyio.move_on_after(2):
                    await self._proc.wait()
                if self._proc.returncode != 0:
                    self.error = self.error or f"the scheduler {_exit(self._proc.returncode)} " \
                                               "instead of answering SHUTDOWN_REQUEST"
        if scope.cancelled_caught:
            self.error = f"the scheduler did not answer SHUTDOWN_REQUEST within {timeout:.0f}s"

    async def close(self, grace: float = 5) -> None:
        """End the program and everything it started (its whole process group)."""
        self._closing = True
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._proc.stdin.aclose()
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    with contextlib.suppress(OSError):
                        os.killpg(self._proc.pid, sig)
                with anyio.move_on_after(grace):
                    await self._proc.wait()
                if self._proc.returncode is not None:
                    break
            with contextlib.suppress(OSError):  # what it left in the background
                os.killpg(self._proc.pid, signal.SIGTERM)

    async def _exchange(self, kind: str, fields: dict, expected: tuple[str, ...],
                        urgent: bool = False) -> Response:
        request = encode(kind, **fields)
        async with self._pipe(urgent):
            if self.error is not None:
                raise SchedProtocolError(self.error)
            self._expecting = True
            try:
                await self._proc.stdin.send(request)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                with anyio.move_on_after(2):
                    await self._proc.wait()
                code = self._proc.returncode
                self.fail(f"the scheduler {_exit(code)} before the search finished"
                          if code is not None
                          else "the scheduler stopped reading its stdin (broken pipe)")
            response = await self._receive.receive()
            self._expecting = False
        if response is None:
            raise SchedProtocolError(self.error or "the scheduler closed its stdout")
        if response.kind == ERROR:
            self.fail(f"the scheduler answered ERROR_RESPONSE: {response.message}")
        elif response.kind not in expected:
            self.fail(f"the scheduler answered {response.kind} to {kind}")
        if self.error is not None:
            raise SchedProtocolError(self.error)
        return response

    @contextlib.asynccontextmanager
    async def _pipe(self, urgent: bool):
        async with self._turn:
            self._urgent += urgent
            try:
                while self._busy or (self._urgent and not urgent):
                    await self._turn.wait()
            finally:
                self._urgent -= urgent
            self._busy = True
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._turn:
                    self._busy = False
                    self._turn.notify_all()

    async def _read_stdout(self) -> None:
        reader = BufferedByteReceiveStream(self._proc.stdout)
        while self.error is None:
            try:
                line = await reader.receive_until(b"\n", MAX_LINE)
            except anyio.IncompleteRead:  # end of output; the original accepted a last line
                self._deliver(bytes(reader.buffer))  # without its newline
                break
            except anyio.DelimiterNotFound:
                self.fail(f"the scheduler sent a line longer than {MAX_LINE} bytes")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                break
            else:
                self._deliver(line)
        if self._closing:
            self._send.send_nowait(None)
            return
        with anyio.move_on_after(2):
            await self._proc.wait()
        code = self._proc.returncode
        self.fail(f"the scheduler {_exit(code)} before the search finished" if code is not None
                  else "the scheduler closed its stdout")

    def _deliver(self, line: bytes) -> None:
        if not line.strip() or self.error is not None:
            return
        if not self._expecting:
            self.fail(f"the scheduler sent {line[:200].decode(errors='replace')!r} when nothing "
                      "was asked (one response per request)")
            return
        try:
            response = decode(line)
        except SchedProtocolError as error:
            self.fail(str(error))
            return
        self._expecting = False
        self._send.send_nowait(response)

    async def _read_stderr(self) -> None:
        pending = b""
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError,
                                 anyio.ClosedResourceError):
            while True:
                pending += await self._proc.stderr.receive()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.on_stderr(line.decode(errors="replace").rstrip("\r"))
        if pending:
            self.on_stderr(pending.decode(errors="replace"))

    async def _watch(self) -> None:
        code = await self._proc.wait()
        if not self._closing:
            await anyio.sleep(0.2)  # let the reader deliver what was written before the exit
            self.fail(f"the scheduler {_exit(code)} before the search finished")


def _exit(code: int | None) -> str:
    return f"was killed by signal {-code}" if code is not None and code < 0 else \
        f"exited with status {code}"


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
            settings.command, env=settings.env, on_failure=self._poke,
            on_stderr=lambda line: engine.emit(SchedulerStderr(line)))  # type: ignore[arg-type]
        self.counts: dict[str, int] = {}
        self.finished = False  # the scheduler said SEARCH_FINISHED_RESPONSE
        self.failure: str | None = None  # executions keep being lost
        self._draining = False
        self._inflight = 0
        self._lost_streak = 0
        self._wake = anyio.Event()
        self._recorded = anyio.Event()
        engine.listeners.append(lambda event: self._poke())

    def drain(self) -> None:
        """Ask for no more parameters; running executions finish, are fetched and recorded."""
        self._draining = True
        self._poke()

    async def run(self) -> dict[str, int]:
        """Until the search finishes (or drain, or failure); counts of states. Raises
        SchedProtocolError after draining when the program failed."""
        self.settings.output.mkdir(parents=True, exist_ok=True)
        grace = 5.0
        async with anyio.create_task_group() as background:
            await self.program.start(background)
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

    async def _feed(self, tg: anyio.abc.TaskGroup) -> None:
        while not self._stopping():
            while (self._inflight >= self.engine.slots.total() + self.settings.ahead
                   and not self._stopping()):
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
            with anyio.move_on_after(wait):
                await self._recorded.wait()
            wait = min(2 * wait, BACKOFF[1])
        return None

    async def _one(self, point: str, parameters: str | tuple[str, ...],
                   argv: tuple[str, ...]) -> None:
        s = self.settings
        try:
            for attempt in range(s.crash_limit + 1):
                run_id = point if attempt == 0 else f"{point}.{attempt}"
                result = await self.engine.submit(Execution(
                    script=s.script, args=argv, code=s.code, uuid=run_id,
                    output=s.output / point, duration=s.duration))
                if result.state is not State.LOST or attempt == s.crash_limit:
                    break
                self.engine.emit(PointRequeued(point, attempt + 1, result.message))  # type: ignore
        finally:
            self._inflight -= 1  # the slot is free: ask for its next point while we record
            self._poke()
        await self._record(point, parameters, result)

    async def _record(self, point: str, parameters: str | tuple[str, ...],
                      result: Result) -> None:
        state = result.state.value
        self.counts[state] = self.counts.get(state, 0) + 1
        self._lost_streak = self._lost_streak + 1 if result.state is State.LOST else 0
        if self._lost_streak >= LOST_STREAK:
            self.failure = f"{self._lost_streak} executions in a row were lost: {result.message}"
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
        if result.state is not State.CANCELLED and self.program.error is None:
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
