"""The wire side of `runaway sched`: the JSON-lines codec and the scheduler program.

The program (`bash -c COMMAND`, started locally in its own session so that Ctrl-C reaches only
us; its whole process group is ended with it) speaks the protocol of the original runaway on
its stdin/stdout: one object per line, `{"KIND": {fields}}`, one response per request, one
request at a time. Shapes match the original's (flowersteam/runaway, librunaway/src/lib/
scheduler.rs); SEARCH_FINISHED_RESPONSE and the list form of `parameters` are ours.

  runaway → scheduler   GET_PARAMETERS_REQUEST {uuid}
                        RECORD_OUTPUT_REQUEST {uuid, parameters, stdout, stderr, ecode,
                                               features, path, state, feature_values}
                        SHUTDOWN_REQUEST {}
  scheduler → runaway   GET_PARAMETERS_RESPONSE {parameters}   a string split like a shell
                                               would, but never run by one; or a list: argv
                        NOT_READY_RESPONSE {}         ask again later (backoff)
                        SEARCH_FINISHED_RESPONSE {}   no more points
                        RECORD_OUTPUT_RESPONSE {}, SHUTDOWN_RESPONSE {}
                        ERROR_RESPONSE {message}      fatal

Any failure of the program (exit, broken pipe, invalid JSON, unexpected or unsolicited
message, ERROR_RESPONSE) is recorded once in `SchedulerProgram.error`; every exchange after it
raises SchedProtocolError with that message.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
from typing import Callable

import anyio
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from liborchestra.errors import OrchestraError

GET, RECORD, SHUTDOWN = "GET_PARAMETERS_REQUEST", "RECORD_OUTPUT_REQUEST", "SHUTDOWN_REQUEST"
PARAMETERS, NOT_READY, FINISHED = ("GET_PARAMETERS_RESPONSE", "NOT_READY_RESPONSE",
                                   "SEARCH_FINISHED_RESPONSE")
RECORDED, SHUT, ERROR = "RECORD_OUTPUT_RESPONSE", "SHUTDOWN_RESPONSE", "ERROR_RESPONSE"
RESPONSES = (PARAMETERS, NOT_READY, FINISHED, RECORDED, SHUT, ERROR)
MAX_LINE = 16 << 20  # bytes of one response line


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


class SchedulerProgram:
    """The running scheduler: request/response pairs one at a time, GETs served first."""

    def __init__(self, command: str, *, env: dict[str, str] | None = None,
                 on_stderr: Callable[[str], None] = lambda line: None,
                 on_failure: Callable[[], None] = lambda: None,
                 hungry: Callable[[], bool] = lambda: False) -> None:
        self.command, self.env = command, env
        self.on_stderr, self.on_failure = on_stderr, on_failure
        self.hungry = hungry  # True while GETs are about to come: records wait for them
        self.error: str | None = None
        self._proc: anyio.abc.Process | None = None
        self._send, self._receive = anyio.create_memory_object_stream[Response | None](math.inf)
        self._turn = anyio.Condition()
        self._busy, self._urgent = False, 0
        self._expecting = self._closing = False
        self._stderr_done = anyio.Event()

    async def start(self, tg: anyio.abc.TaskGroup | None = None) -> None:
        """Start the program, then (now or with `serve`) the tasks reading its output."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        try:
            self._proc = await anyio.open_process(["bash", "-c", self.command], env=env,
                                                  start_new_session=True)
        except OSError as error:
            raise SchedProtocolError(f"cannot start the scheduler: {error}") from None
        if tg is not None:
            self.serve(tg)

    def serve(self, tg: anyio.abc.TaskGroup) -> None:
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
            with anyio.move_on_after(1):  # its last words
                await self._stderr_done.wait()

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
                while self._busy or not urgent and (self._urgent or self.hungry()):
                    with anyio.move_on_after(0.2):
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
        self._stderr_done.set()

    async def _watch(self) -> None:
        code = await self._proc.wait()
        if not self._closing:
            await anyio.sleep(0.2)  # let the reader deliver what was written before the exit
            self.fail(f"the scheduler {_exit(code)} before the search finished")


def _exit(code: int | None) -> str:
    return f"was killed by signal {-code}" if code is not None and code < 0 else \
        f"exited with status {code}"
