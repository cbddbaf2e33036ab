"""Federation: one engine over several clusters — `runaway batch slurm,sge,local ...`.

Every execution is offered to the engine of each cluster at once, and runs on whichever
cluster has a slot free first: each engine sees the work waiting as demand, so every cluster's
allocations grow and shrink elastically as they would alone, and work flows to where there is
room. The first engine to hold a free slot takes the execution's ticket; the others give
their slot back (or stop waiting) without a word.

To the driver loop a federation is an engine: `submit`, `drain`, `recover`, the slot and
allocation views the progress shows. Nodes and allocations are named `cluster/name` in every
event and result (two clusters often share node names), so a journal row says where it ran
and recovery, `cancel` and `logs` go back to that cluster.

A cluster that cannot allocate (refused for good), or whose allocations die, leaves the rest
running: its engine's contenders fail or lose their slot, the execution runs elsewhere, and the
federation says so once per cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Callable, Iterable

import anyio
import attrs

from liborchestra import events
from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution, Result, State
from liborchestra.profile import Profile, load_profile
from liborchestra.schedulers import Allocation
from liborchestra.shell import Shell
from liborchestra.transfer import CodeLarge, CodeLeftOut

SEPARATOR = "/"


@attrs.frozen
class ClusterDown:
    """A cluster of a federation cannot take work now (its allocation was refused for good, or
    it ended); the executions go on on the others. Said once per cluster until it recovers."""

    cluster: str
    message: str


def load_profiles(spec: str) -> list[Profile]:
    """The profiles of `a,b,c` (one name or file each), refusing a cluster named twice."""
    parts = [part.strip() for part in spec.split(",")]
    if any(not part for part in parts):
        raise OrchestraError(f"profile {spec!r}: empty name in a comma-separated list of "
                             "profiles (e.g. slurm,sge,local)")
    profiles = [load_profile(part) for part in parts]
    names = [p.name for p in profiles]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise OrchestraError(f"profile {spec!r}: {', '.join(twice)} named more than once "
                             "(each cluster of a batch is given once)")
    if any(SEPARATOR in n for n in names) and len(profiles) > 1:
        raise OrchestraError(f"profile {spec!r}: a profile name in a list must not contain "
                             f"{SEPARATOR!r}")
    return profiles


def profile_ref(spec: str) -> str:
    """How a journal names the profile(s) it runs on: files by absolute path (the run may be
    resumed from another folder), names as given, `a,b,c` part by part."""
    def one(part: str) -> str:
        path = Path(part).expanduser()
        return str(path.resolve()) if path.is_file() else part

    return ",".join(one(part.strip()) for part in spec.split(","))


def open_engine(spec: str, **options) -> Engine | Federation:
    """The engine of a profile spec: one Engine for one profile, a Federation for several."""
    profiles = load_profiles(spec)
    if len(profiles) == 1:
        return Engine(profiles[0], **options)
    return Federation(profiles, **options)


class Federation:
    def __init__(self, profiles: Iterable[Profile], *,
                 listeners: Iterable[events.Listener] = (), **options) -> None:
        self.listeners = list(listeners)
        self.barriers: list[Callable[[], None]] = []  # as Engine.barriers, for every cluster
        self.engines: dict[str, Engine] = {}
        for profile in profiles:
            name = profile.name
            self.engines[name] = Engine(profile, listeners=[
                lambda event, name=name: self._relay(name, event)], **options)
            self.engines[name].barriers.append(self.barrier)
        first = next(iter(self.engines.values()))
        for engine in self.engines.values():
            engine.share_archives(first)
        self.slots = _Slots(self.engines.values())
        self.allocator = _Allocators(self.engines)
        self.draining = False
        self._down: set[str] = set()
        self._said: set[object] = set()  # code notes, the same from every cluster: said once
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def profile(self) -> Profile:
        """The first cluster's profile (for settings that are the same for all)."""
        return next(iter(self.engines.values())).profile

    async def __aenter__(self) -> Federation:
        self._exit = contextlib.AsyncExitStack()
        await self._exit.__aenter__()
        try:
            for engine in self.engines.values():
                await self._exit.enter_async_context(engine)
            self._tg = await self._exit.enter_async_context(anyio.create_task_group())
        except BaseException as error:
            await self._exit.__aexit__(type(error), error, error.__traceback__)
            raise
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool | None:
        if exc_type is not None and self._tg is not None:
            self._tg.cancel_scope.cancel()
        return await self._exit.__aexit__(exc_type, exc, tb)

    # -- work ------------------------------------------------------------------------------------

    def submit(self, execution: Execution) -> asyncio.Future[Result]:
        if self._tg is None:
            raise RuntimeError("use the federation inside `async with`")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._tg.start_soon(self._race, execution, future)
        return future

    async def run(self, execution: Execution) -> Result:
        return await self.submit(execution)

    async def _race(self, execution: Execution, future: asyncio.Future[Result]) -> None:
        """Offer the execution to every cluster; the one that takes its ticket runs it."""
        ticket = _Ticket()
        ticket.offers = {engine: engine.submit(execution, ticket)
                         for engine in self.engines.values()}
        future.add_done_callback(lambda f: ticket.withdraw() if f.cancelled() else None)
        clusters = {engine: name for name, engine in self.engines.items()}
        last: Result | None = None
        try:
            async for engine, offer in _as_completed(ticket.offers):
                if offer.cancelled():
                    continue
                result = self._qualify_result(clusters[engine], offer.result())
                if ticket.winner is engine:
                    _resolve(future, result)
                    return
                if result.state is State.LOST:  # this cluster could not take it
                    self._cluster_down(clusters[engine], result.message)
                last = result
            # no cluster took it (all refused, or drained): the last word is the result
            result = last or Result(execution, State.CANCELLED, message="cancelled")
            self.emit(events.ExecutionFinished(result))
            _resolve(future, result)
        finally:
            ticket.withdraw()
            if not future.done():
                future.cancel()

    def drain(self) -> None:
        self.draining = True
        for engine in self.engines.values():
            engine.drain()

    # -- resume, cancel, logs: routed by qualified names ---------------------------------------

    def locate(self, node: str, allocation: str | None = None) -> tuple[Engine, str, str | None]:
        cluster, _, bare = node.partition(SEPARATOR)
        engine = self.engines.get(cluster)
        if engine is None or not bare:
            raise OrchestraError(f"node {node!r}: not a node of clusters "
                                 f"{', '.join(self.engines)} (cluster/node expected)")
        return engine, bare, _bare(allocation)

    def node_shell(self, node: str, allocation: str | None = None) -> Shell:
        engine, bare, allocation = self.locate(node, allocation)
        return engine.node_shell(bare, allocation)

    async def kill_run(self, execution: Execution, node: str,
                       allocation: str | None = None) -> None:
        engine, bare, allocation = self.locate(node, allocation)
        await engine.kill_run(execution, bare, allocation)

    async def sweep(self) -> None:
        for engine in self.engines.values():
            await engine.sweep()

    async def recover(self, execution: Execution, node: str, slot: str | None = None,
                      allocation: str | None = None) -> Result | None:
        engine, bare, allocation = self.locate(node, allocation)
        return await engine.recover(execution, bare, slot, allocation)

    def job_names(self) -> list[str]:
        return [f"{name}{SEPARATOR}{job}" for name, engine in self.engines.items()
                for job in engine.job_names()]

    async def sweep_stale(self, name: str) -> None:
        cluster, _, job = name.partition(SEPARATOR)
        if cluster in self.engines and job:
            await self.engines[cluster].sweep_stale(job)

    async def release_stale(self, allocation_id: str) -> None:
        cluster, _, bare = allocation_id.partition(SEPARATOR)
        if cluster in self.engines and bare:
            await self.engines[cluster].release_stale(bare)

    # -- events ----------------------------------------------------------------------------------

    def emit(self, event: events.Event) -> None:
        events.deliver(self.listeners, event)

    def barrier(self) -> None:
        for barrier in self.barriers:
            barrier()

    def _relay(self, cluster: str, event: events.Event) -> None:
        """A cluster's event, its nodes and allocations named `cluster/...`."""
        q = _qualifier(cluster)
        if isinstance(event, events.ExecutionStarted):
            event = attrs.evolve(event, node=q(event.node),
                                 allocation=q(event.allocation) if event.allocation else "")
        elif isinstance(event, events.ExecutionFinished):
            event = attrs.evolve(event, result=self._qualify_result(cluster, event.result))
        elif isinstance(event, events.AllocationGranted):
            self._down.discard(cluster)
            event = attrs.evolve(event, allocation=q(event.allocation),
                                 nodes=tuple(q(n) for n in event.nodes))
        elif isinstance(event, events.AllocationReleased):
            event = attrs.evolve(event, allocation=q(event.allocation))
        elif isinstance(event, (events.AllocationRequested, events.AllocationRefused)):
            event = attrs.evolve(event, scheduler=f"{cluster}: {event.scheduler}")
            if isinstance(event, events.AllocationRefused) and event.retry_in is None:
                self._cluster_down(cluster, event.message)
        elif isinstance(event, (events.AgentStarted, events.AgentUnavailable)):
            event = attrs.evolve(event, node=q(event.node))
        elif isinstance(event, events.ConnectionProblem):
            event = attrs.evolve(event, host=q(event.host))
        elif isinstance(event, (CodeLeftOut, CodeLarge)):
            if event in self._said:
                return
            self._said.add(event)
        self.emit(event)

    def _cluster_down(self, cluster: str, message: str) -> None:
        if cluster not in self._down:
            self._down.add(cluster)
            self.emit(ClusterDown(cluster, message))  # type: ignore[arg-type]

    def _qualify_result(self, cluster: str, result: Result) -> Result:
        q = _qualifier(cluster)
        if result.node is None or result.node.startswith(f"{cluster}{SEPARATOR}"):
            return result
        return attrs.evolve(result, node=q(result.node))


class _Ticket:
    """Taken by the first engine holding a free slot; the other offers are withdrawn."""

    def __init__(self) -> None:
        self.winner: Engine | None = None
        self.offers: dict[Engine, asyncio.Future[Result]] = {}

    def take(self, engine: Engine) -> bool:
        if self.winner is not None:
            return False
        self.winner = engine
        for other, offer in self.offers.items():
            if other is not engine and not offer.done():
                offer.cancel()
        return True

    def withdraw(self) -> None:
        """Nobody runs it (the caller gave up): every offer still open goes."""
        for offer in self.offers.values():
            if not offer.done():
                offer.cancel()


class _Slots:
    """The slots of every cluster, as the driver's window and the progress view count them."""

    def __init__(self, engines: Iterable[Engine]) -> None:
        self._engines = list(engines)

    def total(self) -> int:
        return sum(e.slots.total() for e in self._engines)

    def busy(self) -> int:
        return sum(e.slots.busy() for e in self._engines)

    def free(self) -> int:
        return sum(e.slots.free() for e in self._engines)

    @property
    def waiting(self) -> int:
        return max((e.slots.waiting for e in self._engines), default=0)


class _Allocators:
    """The live allocations of every cluster, named `cluster/id` (for progress views)."""

    def __init__(self, engines: dict[str, Engine]) -> None:
        self._engines = engines

    @property
    def live(self) -> dict[str, Allocation]:
        live = {}
        for cluster, engine in self._engines.items():
            q = _qualifier(cluster)
            for allocation in engine.allocator.live.values():
                nodes = tuple(attrs.evolve(n, name=q(n.name)) for n in allocation.nodes)
                live[q(allocation.id)] = attrs.evolve(allocation, id=q(allocation.id),
                                                      nodes=nodes)
        return live

    @property
    def pending(self) -> int:
        return sum(e.allocator.pending for e in self._engines.values())

    async def release_all(self) -> None:
        for engine in self._engines.values():
            await engine.allocator.release_all()


def _resolve(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)


def _qualifier(cluster: str):
    return lambda name: f"{cluster}{SEPARATOR}{name}"


def _bare(name: str | None) -> str | None:
    return None if name is None else name.partition(SEPARATOR)[2] or name


async def _as_completed(offers: dict[Engine, asyncio.Future[Result]]):
    """(engine, future) as each offer completes (a cancelled one included)."""
    engines = {future: engine for engine, future in offers.items()}
    pending = set(engines)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for future in done:
            yield engines[future], future
