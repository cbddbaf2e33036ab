"""Engine: owns the scheduler, the SSH pool, the slots and the executions in flight.

`async with Engine(profile) as engine: result = await engine.submit(execution)`. Leaving the
block normally waits for every submitted execution; leaving it with an error or a cancellation
kills every remote process the engine started and releases every allocation (no orphans).
`SyncEngine` is the same for scripts and notebooks, with `concurrent.futures` futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Protocol

import anyio
import anyio.from_thread
import attrs

from liborchestra import clock, events
from liborchestra.agent import Agents
from liborchestra.allocator import Allocator
from liborchestra.errors import (
    ConnectionLostError,
    LaunchError,
    OrchestraError,
    SSHError,
    TransferError,
)
from liborchestra.execution import Execution, Result, State, tail
from liborchestra.launch import Launcher, LaunchSettings, check_runnable
from liborchestra.profile import Profile
from liborchestra.schedulers import Allocation, Node, create_scheduler
from liborchestra.shell import LocalShell, Shell, SrunShell, SSHShell
from liborchestra.slots import SlotPool
from liborchestra.ssh import Limits, SSHPool
from liborchestra.transfer import CodeArchive, CodeCache, build_archive, remote_path

if sys.version_info < (3, 11):  # anyio depends on the backport there
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)
SWEEP_INTERVAL = 1.0  # seconds between batched removals of finished run folders (`rm`)
DISCARD_INTERVAL = 0.1  # seconds between hand-overs of finished run folders to node agents
# (a frame each: their folders hold the next runs sooner, and fewer wait as spares)
NODE_QUARANTINE = 60.0  # seconds an unreachable node gets no work


class Engine:
    def __init__(self, profile: Profile, *, leave: str = "code",
                 send_ignore: str = ".sendignore", fetch_ignore: str = ".fetchignore",
                 listeners: Iterable[events.Listener] = ()) -> None:
        self.profile = profile
        self.listeners = list(listeners)
        self.barriers: list[Callable[[], None]] = []  # see `barrier`
        ssh = profile.ssh
        limits = Limits() if ssh is None else Limits(
            channels=ssh.max_channels, connections=ssh.max_connections,
            keepalive=ssh.keepalive, connect_timeout=ssh.connect_timeout)
        self.pool = SSHPool(limits)
        self.scheduler = create_scheduler(profile, self.pool)
        self.slots = SlotPool()
        self.code = CodeCache(self.emit)  # warns of large or left-out code, prunes
        self.send_ignore = send_ignore
        self.leave = leave
        self.agents = Agents(profile.directory, profile.agent, self.emit, self.barrier) \
            if profile.agent else None
        self.launcher = Launcher(LaunchSettings(
            profile=profile.name, root=profile.directory, setup=profile.setup, env=profile.env,
            leave=leave, fetch_ignore=fetch_ignore,
            execution=profile.scheduler.custom.execution if profile.scheduler.custom else (),
            kill_grace=profile.kill_grace),
            self.emit, self.agents, self.barrier)
        self.launcher.code_missing = self.code.forget
        self.allocator = Allocator(self.scheduler, self.slots, self.emit, self._allocation_ended,
                                   self._allocation_granted)
        self._shells: dict[Node, Shell] = {}
        self._archives: dict[tuple, CodeArchive | TransferError] = {}
        self._archive_lock = anyio.Lock()
        self._running: dict[str, list[_Running]] = {}  # allocation id -> executions on it
        self._waiting: set[_Running] = set()  # executions waiting for a slot
        self.draining = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._executions: dict[asyncio.Task, anyio.CancelScope] = {}  # see `submit`
        self._pending = 0
        self._runnable: set[Path] = set()  # scripts checked once: the code is archived once
        self._idle = anyio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self._exit = contextlib.AsyncExitStack()
        await self._exit.__aenter__()
        self._exit.push_async_callback(self._shutdown)
        self._tg = await self._exit.enter_async_context(anyio.create_task_group())
        self._exit.push_async_callback(self._finish_executions)  # before the group's end
        self._background = anyio.CancelScope()
        self._tg.start_soon(self._housekeeping)
        return self

    async def _finish_executions(self) -> None:
        """Wait for the executions' tasks (cancelled, when the engine is left on an error):
        they are the engine's own asyncio tasks, not its task group's (see `submit`)."""
        with anyio.CancelScope(shield=True):
            while self._executions:
                await asyncio.wait(list(self._executions))

    async def _housekeeping(self) -> None:
        """Background work: the allocation loop and batched removal of run folders."""
        async def sweeper() -> None:
            step = SWEEP_INTERVAL if self.agents is None else DISCARD_INTERVAL
            every = round(SWEEP_INTERVAL / step)
            for tick in itertools.count(1):
                await anyio.sleep(step)
                await self.launcher.sweep(removing=tick % every == 0)

        with self._background:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sweeper)
                tg.start_soon(self.allocator.run)
                if self.agents is not None:
                    tg.start_soon(self.agents.serve)

    async def __aexit__(self, exc_type, exc, tb) -> bool | None:
        caught: BaseException | None = None
        if exc_type is None:
            try:
                await self.join()
                await self._discard_last()
            except BaseException as error:  # cancelled while waiting: clean up as on error
                caught = error
                exc_type, exc, tb = type(error), error, error.__traceback__
        if exc_type is not None:
            self._tg.cancel_scope.cancel()
            for scope in self._executions.values():
                scope.cancel()
        self._background.cancel()
        suppressed = await self._exit.__aexit__(exc_type, exc, tb)
        if caught is not None and not suppressed:
            raise caught
        return suppressed

    async def _discard_last(self) -> None:
        """Hand the last run folders to the nodes' agents while they still run, and let them
        leave: the folders go with their spares, instead of by one `rm` per 200 folders and
        node once the agents are gone (0.17 s of a 2,000-run batch's end on the bed)."""
        await self.launcher.sweep()
        if self.agents is not None:
            await self.agents.leave()

    async def join(self) -> None:
        """Wait until every submitted execution has finished (any number of waiters: they
        share one event, made when work arrives at an idle engine)."""
        while self._pending:
            await self._idle.wait()

    async def _shutdown(self) -> None:
        """Release every allocation and close every connection, even while cancelled."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(30):
                await self.launcher.sweep()
            await self.allocator.release_all()
            if self.leave == "nothing":
                await self._remove_code()
            await self.pool.aclose()

    async def _remove_code(self) -> None:
        root = remote_path(self.profile.directory)
        for shell, digest in self.code.sent_to():
            with contextlib.suppress(OrchestraError), anyio.move_on_after(10):
                await shell.run(f"rm -f {root}/code/{digest}.tar")

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, execution: Execution,
               ticket: Ticket | None = None) -> asyncio.Future[Result]:
        """Queue an execution; the future resolves to its Result (never raises for failures
        of the script or the infrastructure: those are states of the Result). With a
        `ticket`, engines of several clusters compete for it: it runs where a slot frees
        first (see liborchestra.federation); an engine that loses says nothing."""
        if self._tg is None:
            raise RuntimeError("use the engine inside `async with`")
        if execution.script not in self._runnable:
            check_runnable(execution.script)
            self._runnable.add(execution.script)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        scope = anyio.CancelScope()
        future.add_done_callback(lambda f: scope.cancel() if f.cancelled() else None)
        if self._pending == 0:
            self._idle = anyio.Event()
        self._pending += 1
        # A task of its own, but not one of the task group's: an anyio task costs 40 us more
        # on the test machine, and a driver starts thousands. Its scope is how it is cancelled.
        task = asyncio.get_running_loop().create_task(
            self._execute(execution, future, scope, ticket))
        self._executions[task] = scope
        task.add_done_callback(lambda task: self._ended(task, future))
        return future

    def _ended(self, task: asyncio.Task, future: asyncio.Future[Result]) -> None:
        """An execution's task ended: a failure of the engine itself (`_execute` turns every
        other into a Result) reaches whoever waits for it, as the task group would raise it."""
        self._executions.pop(task, None)
        if not task.cancelled() and task.exception() is not None and not future.done():
            future.set_exception(task.exception())  # type: ignore[arg-type]

    async def run(self, execution: Execution) -> Result:
        return await self.submit(execution)

    async def _execute(self, execution: Execution, future: asyncio.Future[Result],
                       scope: anyio.CancelScope, ticket: Ticket | None) -> None:
        result: Result | None = None
        running = _Running(scope)
        asked, scratch = execution, None
        if execution.output is None:  # fetched into a scratch folder: the Result keeps tails
            scratch = Path(tempfile.mkdtemp(prefix="orchestra-result-"))
            execution = attrs.evolve(execution, output=scratch)
        try:
            with scope:
                result = await self._place(execution, running, ticket)
            if result is None and running.lost:
                result = Result(execution, State.LOST, node=running.node, message=running.lost)
            elif result is None and running.drained:
                result = Result(execution, State.CANCELLED, message="drained before it started")
            elif result is None:
                result = Result(execution, State.CANCELLED, message="cancelled")
        except (SSHError, LaunchError, OrchestraError) as error:
            result = Result(execution, State.LOST, node=running.node, message=str(error))
        except Exception as error:  # e.g. ENOSPC storing results: this execution fails, alone
            log.exception("execution %s failed unexpectedly", execution.uuid)
            result = Result(execution, State.FAILED, node=running.node,
                            message=f"{type(error).__name__}: {error}")
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()
            if result is not None:
                result = _finished(result, asked)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if result is not None:
                if ticket is None or ticket.winner is self:
                    self.emit(events.ExecutionFinished(result))
                if not future.done():
                    future.set_result(result)
            elif not future.done():
                future.cancel()

    async def _place(self, execution: Execution, running: _Running,
                     ticket: Ticket | None = None) -> Result | None:
        try:
            archive = await self._archive(execution.code_dir, execution.ship)
        except TransferError as error:  # the code itself (a file it cannot read): failed,
            return Result(execution, State.FAILED, message=str(error))  # not lost: no rerun
        if self.draining:
            return Result(execution, State.CANCELLED, message="drained before it started")
        running.agent = not execution.stream  # streamed ones go past the agent
        self._waiting.add(running)
        try:
            slot = await self.slots.acquire(execution.duration)
        finally:
            self._waiting.discard(running)
        if ticket is not None and not ticket.take(self):  # another cluster's slot was first
            with anyio.CancelScope(shield=True):
                await self.slots.release(slot)
            return None
        running.node = slot.node.name
        on_allocation = self._running.setdefault(slot.allocation.id, [])
        on_allocation.append(running)
        try:
            shell = self.shell(slot.node)
            try:
                if await self.code.ensure(shell, slot.node.filesystem, self.profile.directory,
                                          archive):
                    self.emit(events.CodeSent(slot.node.filesystem, archive.digest,
                                              len(archive.data)))
            except SSHError as error:
                down = not isinstance(error, ConnectionLostError)
                result = Result(execution, State.LOST, node=slot.node.name, slot=slot.handle,
                                message=str(error), node_down=down)
            else:
                result = await self.launcher.run(shell, slot, execution, archive)
            if result.node_down:
                await self.slots.quarantine(slot.node.name, NODE_QUARANTINE)
            return result
        finally:
            on_allocation.remove(running)
            self.slots.give_back(slot)

    def drain(self) -> None:
        """Start nothing new: executions still waiting for a slot end CANCELLED (not started);
        running ones go on."""
        self.draining = True
        for running in list(self._waiting):
            running.drained = True
            running.scope.cancel()

    def _allocation_granted(self, allocation: Allocation) -> None:
        """Work waits for these nodes: their agents start now, all together, rather than each
        at its first run (after the code is looked for there)."""
        if self.agents is not None:
            waiting = sum(running.agent for running in self._waiting)
            for node in allocation.nodes[:waiting]:  # those work goes to first: the least
                self.agents.warm(self.shell(node))  # busy (SlotPool._pick)

    async def _allocation_ended(self, allocation: Allocation, reason: str) -> None:
        """The cluster ended an allocation: its executions are lost; kill what survives
        (processes started over SSH are not part of the job, so the scheduler leaves them)."""
        for running in list(self._running.get(allocation.id, [])):
            running.lost = f"allocation {allocation.id} ended: {reason}"
            running.scope.cancel()

    async def _archive(self, folder: Path,
                       ship: tuple[tuple[str, Path], ...] = ()) -> CodeArchive:
        key = (folder, ship)
        built = self._archives.get(key)
        if isinstance(built, CodeArchive):  # built already: no lock, and no turn of the loop
            return built  # that taking one costs
        async with self._archive_lock:
            if key not in self._archives:
                try:
                    self._archives[key] = await anyio.to_thread.run_sync(
                        build_archive, folder, self.send_ignore, ship)
                except TransferError as error:  # said once; not read again for every run
                    self._archives[key] = error
            built = self._archives[key]
            if isinstance(built, TransferError):
                raise built
            return built

    def share_archives(self, other: Engine) -> None:
        """Build each code archive once for both engines (a federation's clusters ship the
        same code: hashing it once per cluster would only cost time)."""
        self._archives, self._archive_lock = other._archives, other._archive_lock

    async def sweep_stale(self, name: str) -> None:
        """Cancel what the cluster knows under the job name of an earlier engine."""
        with contextlib.suppress(OrchestraError), anyio.move_on_after(60):
            await self.scheduler.sweep(name)

    async def release_stale(self, allocation_id: str) -> None:
        """Release an allocation an earlier driver left behind (known by id only)."""
        with contextlib.suppress(OrchestraError), anyio.move_on_after(60):
            await self.scheduler.release(Allocation(id=allocation_id, nodes=()))

    def job_names(self) -> list[str]:
        """The names this engine's allocation requests carry (for `sweep_stale` later)."""
        name = getattr(self.scheduler, "name", None)
        return [name] if name else []

    def locate(self, node: str, allocation: str | None = None) -> tuple[Engine, str, str | None]:
        """The engine that runs on `node`, with the node and allocation as it knows them (a
        federation routes its qualified names; one engine is its own)."""
        return self, node, allocation

    def node_shell(self, node: str, allocation: str | None = None) -> Shell:
        """A shell on a node of one of this engine's allocations (known by name)."""
        return self.shell(self.scheduler.reach(node, allocation))

    async def sweep(self) -> None:
        """Remove now the run folders of finished executions (batched, normally each second)."""
        await self.launcher.sweep()

    async def kill_run(self, execution: Execution, node: str,
                       allocation: str | None = None) -> None:
        """Kill what may still run of `execution` on `node` and remove its run folder."""
        await self.launcher.kill(self.node_shell(node, allocation), execution)

    async def recover(self, execution: Execution, node: str, slot: str | None = None,
                      allocation: str | None = None) -> Result | None:
        """The result of a run an earlier driver started on `node` (resume), or None when
        there is nothing to recover. Raises SSHError while the node cannot be reached."""
        shell = self.node_shell(node, allocation)
        result = await self.launcher.recover(shell, execution, node, slot)
        if result is not None:
            result = attrs.evolve(result, **_epoch(result))
            self.emit(events.ExecutionFinished(result))
        return result

    async def allocate(self) -> list[Allocation]:
        """Wait for an allocation (for checks) and return the live ones."""
        while not self.allocator.live:
            async with self._probe():
                pass
        return list(self.allocator.live.values())

    @contextlib.asynccontextmanager
    async def _probe(self):
        """Stand in line for a slot, so the allocator sees demand; give it straight back."""
        slot = await self.slots.acquire()
        await self.slots.release(slot)
        yield

    def shell(self, node: Node) -> Shell:
        if node not in self._shells:
            if node.srun is not None:
                login = SSHShell(self.pool.host(node.srun.login), node.srun.login.host)
                shell: Shell = SrunShell(login, node.srun.job, node.name)
            elif node.endpoint is None:
                shell = LocalShell(node.name)
            else:
                shell = SSHShell(self.pool.host(node.endpoint), node.name)
            self._shells[node] = shell
        return self._shells[node]

    def emit(self, event: events.Event) -> None:
        events.deliver(self.listeners, event)

    def barrier(self) -> None:
        """Called before anything leaves for a node (an order to start a run, the removal of
        run folders): what the driver wrote meanwhile must be durable by then (its journal
        commits there, once for all the runs that leave together)."""
        for barrier in self.barriers:
            barrier()


def _finished(result: Result, asked: Execution) -> Result:
    """What the caller sees: its own execution, wall-clock times, stdout/stderr tails."""
    folder = result.execution.output
    out, err = result.stdout, result.stderr
    if result.ecode is None and folder is not None:  # no record came back: what is there
        out, err = tail(folder / "stdout"), tail(folder / "stderr")
    return attrs.evolve(result, execution=asked,
                        output=asked.output if result.output is not None else None,
                        stdout=out, stderr=err, **_epoch(result))


def _epoch(result: Result) -> dict[str, float | None]:
    """The launcher times runs on the event loop's (monotonic) clock; everything people and
    journals read is in epoch seconds."""
    offset = time.time() - clock.now()
    return {"started": None if result.started is None else result.started + offset,
            "finished": None if result.finished is None else result.finished + offset}


@attrs.define(eq=False)
class _Running:
    scope: anyio.CancelScope
    node: str | None = None
    lost: str = ""  # why the infrastructure took it away
    drained: bool = False
    agent: bool = False  # runs through the node's agent (not streamed)


class Ticket(Protocol):
    """One execution that several engines compete for (liborchestra.federation)."""

    winner: object | None

    def take(self, engine: Engine) -> bool:
        """Called by an engine holding a free slot: True when it is first (it runs it)."""


class SyncEngine:
    """A blocking facade: `with SyncEngine(profile) as e: e.submit(x).result()`."""

    def __init__(self, profile: Profile, **options: object) -> None:
        self._engine = Engine(profile, **options)  # type: ignore[arg-type]
        self._portal_cm = anyio.from_thread.start_blocking_portal(backend="asyncio")

    def __enter__(self) -> SyncEngine:
        self._portal = self._portal_cm.__enter__()
        self._engine_cm = self._portal.wrap_async_context_manager(self._engine)
        self._engine_cm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                self._engine_cm.__exit__(exc_type, exc, tb)
            finally:
                self._portal_cm.__exit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:  # the task groups' wrapping: not the user's
            inner = _unwrap(group, exc)
            if inner is exc:
                return  # the user's own exception (or KeyboardInterrupt) goes on unchanged
            raise inner from None

    def submit(self, execution: Execution) -> concurrent.futures.Future[Result]:
        """Raises OrchestraError now for a script that is missing or cannot be run."""
        check_runnable(execution.script)
        return self._portal.start_task_soon(self._engine.run, execution)

    def map(self, executions: Iterable[Execution]) -> list[Result]:
        futures = [self.submit(e) for e in executions]
        return [f.result() for f in futures]


def _unwrap(group: BaseExceptionGroup, original: BaseException | None) -> BaseException:
    """The exception a user expects from inside an exception group: their own (or the
    KeyboardInterrupt) when it is in there, else the only real one, else the group."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        elif not isinstance(error, asyncio.CancelledError):
            leaves.append(error)

    walk(group)
    if original is not None and (original in leaves or not leaves):
        return original
    interrupts = [e for e in leaves if isinstance(e, KeyboardInterrupt)]
    if interrupts:
        return interrupts[0]
    return leaves[0] if len(leaves) == 1 else group
