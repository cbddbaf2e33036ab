"""Where a bash command runs: this machine (a subprocess) or a host over a pooled SSH channel.

Both speak the same small interface, so code shipping, the remote wrapper and fetching are
written once and behave the same on `local` as on a cluster node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from typing import AsyncIterator, Callable, Protocol

import anyio

from liborchestra.errors import ConnectionLostError
from liborchestra.ssh import Completed, HostPool, lost_errors

Sink = Callable[[bytes], None]
_CHUNK = 65536


class Pipe(Protocol):
    """A long-lived command's stdin and stdout, for a conversation (the node agent)."""

    def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None:
        """End its input (what was written goes first); the command ends when it sees it."""

    async def readline(self) -> bytes:
        """One line, b"" at end of output."""

    async def readexactly(self, n: int) -> bytes:
        """Raises ConnectionLostError when output ends first."""


class Shell(Protocol):
    """Runs bash commands on one host."""

    name: str

    def open(self, command: str) -> contextlib.AbstractAsyncContextManager[Pipe]:
        """A command that stays up, spoken to through its stdin and stdout; leaving the block
        closes its stdin (and ends it); its stderr is discarded."""

    async def run(self, command: str, input: bytes | None = None) -> Completed:
        """Run to completion and collect stdout and stderr."""

    async def stream(self, command: str, stdout: Sink, stderr: Sink,
                     input: bytes | None = None) -> int:
        """Run, handing output chunks to the sinks as they arrive; return the exit status."""


async def _pump(reader: object, sink: Sink) -> None:
    while True:
        chunk = await reader.read(_CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            return
        sink(chunk)


class _StreamPipe:
    """A Pipe over reader/writer streams (asyncio's or asyncssh's); end of output or a lost
    connection while reading is ConnectionLostError."""

    def __init__(self, name: str, reader, writer) -> None:
        self.name, self._reader, self._writer = name, reader, writer

    def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except (*lost_errors(), RuntimeError) as error:  # RuntimeError: asyncio's closed pipe
            raise ConnectionLostError(f"{self.name}: pipe closed: {error}") from None

    def write_eof(self) -> None:
        with contextlib.suppress(*lost_errors(), OSError, RuntimeError):  # gone: ended already
            self._writer.write_eof()

    async def readline(self) -> bytes:
        try:
            return await self._reader.readline()
        except lost_errors() as error:
            raise ConnectionLostError(f"{self.name}: connection lost: {error}") from None

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ConnectionLostError(f"{self.name}: output ended mid-frame") from None
        except lost_errors() as error:
            raise ConnectionLostError(f"{self.name}: connection lost: {error}") from None


class LocalShell:
    """bash on this machine. Each command gets its own process group, killed if cancelled."""

    def __init__(self, name: str = "localhost") -> None:
        self.name = name

    @contextlib.asynccontextmanager
    async def open(self, command: str) -> AsyncIterator[Pipe]:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True, limit=1 << 20)
        try:
            yield _StreamPipe(self.name, proc.stdout, proc.stdin)
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(*lost_errors(), RuntimeError):
                    proc.stdin.close()
                with anyio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()

    async def run(self, command: str, input: bytes | None = None) -> Completed:
        out: list[bytes] = []
        err: list[bytes] = []
        code = await self.stream(command, out.append, err.append, input)
        return Completed(code, b"".join(out), b"".join(err))

    async def stream(self, command: str, stdout: Sink, stderr: Sink,
                     input: bytes | None = None) -> int:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump, proc.stdout, stdout)
                tg.start_soon(_pump, proc.stderr, stderr)
                if input:
                    proc.stdin.write(input)
                    with contextlib.suppress(ConnectionError):
                        await proc.stdin.drain()
                proc.stdin.close()
            return await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with anyio.CancelScope(shield=True):
                    await proc.wait()


class SSHShell:
    """bash on a host reached over SSH (the login shell's environment, as with `ssh host cmd`)."""

    def __init__(self, pool: HostPool, name: str | None = None) -> None:
        self.pool = pool
        self.name = name or pool.endpoint.host

    async def run(self, command: str, input: bytes | None = None) -> Completed:
        return await self.pool.run(_bash(command), input)

    @contextlib.asynccontextmanager
    async def open(self, command: str) -> AsyncIterator[Pipe]:
        async with self.pool.process(_bash(command)) as proc:
            try:
                yield _StreamPipe(self.name, proc.stdout, proc.stdin)
            finally:
                with contextlib.suppress(*lost_errors(), OSError):
                    proc.stdin.write_eof()

    async def stream(self, command: str, stdout: Sink, stderr: Sink,
                     input: bytes | None = None) -> int:
        lost: list[BaseException] = []

        async def pump(reader: object, sink: Sink) -> None:
            try:
                await _pump(reader, sink)
            except lost_errors() as error:  # surfaced once, below, not as an exception group
                lost.append(error)

        async with self.pool.process(_bash(command)) as proc:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, proc.stdout, stdout)
                tg.start_soon(pump, proc.stderr, stderr)
                try:
                    if input:
                        proc.stdin.write(input)
                    proc.stdin.write_eof()
                except lost_errors() as error:
                    lost.append(error)
            if lost:
                raise ConnectionLostError(f"{self.name}: connection lost: {lost[0]}")
            await proc.wait_closed()
            if proc.exit_status is None:
                raise ConnectionLostError(f"{self.name}: channel closed before exit status")
            return proc.exit_status


def _bash(command: str) -> str:
    """Run under bash whatever the user's login shell is (csh users exist on clusters)."""
    return f"bash -c {shlex.quote(command)}"


class SrunShell:
    """bash on a node of a Slurm job, as an `srun --overlap` step launched from the login host,
    for sites that forbid SSH to compute nodes."""

    def __init__(self, login: SSHShell, job: str, node: str) -> None:
        self.login, self.job, self.name = login, job, node

    def _step(self, command: str) -> str:
        return (f"srun --jobid={shlex.quote(self.job)} --overlap -w {shlex.quote(self.name)} "
                f"-N1 -n1 --quiet bash -c {shlex.quote(command)}")

    async def run(self, command: str, input: bytes | None = None) -> Completed:
        return await self.login.run(self._step(command), input)

    def open(self, command: str) -> contextlib.AbstractAsyncContextManager[Pipe]:
        return self.login.open(self._step(command))

    async def stream(self, command: str, stdout: Sink, stderr: Sink,
                     input: bytes | None = None) -> int:
        return await self.login.stream(self._step(command), stdout, stderr, input)
