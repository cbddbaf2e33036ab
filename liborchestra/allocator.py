"""Allocator: decides when to ask for, replace and give back allocations.

Elastic: one allocation is asked for when work waits; more while work still waits and fewer
than `max_allocations` are live; an allocation idle for `idle_timeout` is given back.
Walltime-aware: work that declared a duration no live allocation can hold gets an allocation
long enough for it; an allocation about to end is replaced before it does. The scheduler is
polled once per interval for all allocations together; one that ended (cancelled or timed out
by the cluster) is withdrawn and its executions reported lost.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import anyio

from liborchestra import events
from liborchestra.errors import OrchestraError, SchedulerError, is_transient
from liborchestra.schedulers.base import Allocation, Scheduler
from liborchestra.slots import WALLTIME_MARGIN, SlotPool

log = logging.getLogger(__name__)
Ended = Callable[[Allocation, str], Awaitable[None]]
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # backoff of refused requests: first wait, longest wait


class Allocator:
    def __init__(self, scheduler: Scheduler, slots: SlotPool,
                 emit: Callable[[events.Event], None], on_ended: Ended,
                 on_granted: Callable[[Allocation], None] = lambda allocation: None) -> None:
        spec = scheduler.profile.scheduler
        self.scheduler, self.slots, self.emit, self.on_ended = scheduler, slots, emit, on_ended
        self.on_granted = on_granted  # before its slots are handed out
        self.max_allocations = spec.max_allocations
        self.idle_timeout = spec.idle_timeout
        self.poll_interval = spec.poll_interval
        self.walltime = spec.walltime
        self.live: dict[str, Allocation] = {}
        self._pending = 0
        self._idle_since: dict[str, float] = {}
        self._wake = anyio.Event()
        self._failures = 0
        self._retry_at = 0.0
        slots.on_wait = self.wake

    @property
    def pending(self) -> int:
        """Allocation requests sent and not yet granted or refused."""
        return self._pending

    def wake(self) -> None:
        """Something changed (work arrived): reconsider now rather than at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        """The allocation loop; runs until cancelled."""
        async with anyio.create_task_group() as tg:
            last_poll = anyio.current_time()
            while True:
                now = anyio.current_time()
                if self.live and now - last_poll >= self.poll_interval:
                    last_poll = now
                    await self._poll()
                await self._give_back_idle(now)
                walltime = self._wanted(now)
                if walltime is not None:
                    self._pending += 1
                    tg.start_soon(self._allocate, walltime, self.slots.unfit_duration())
                with anyio.move_on_after(min(1.0, self.poll_interval)):
                    await self._wake.wait()
                self._wake = anyio.Event()

    def _wanted(self, now: float) -> float | None | bool:
        """The walltime of a new allocation to ask for now, or None for no request."""
        if self._pending or not self.slots.waiting:
            return None
        if self._failures and now < self._retry_at:
            return None
        renewing = [a for a in self.live.values() if self._expiring(a, now)]
        if len(self.live) - len(renewing) >= self.max_allocations:
            return None
        if len(self.live) >= 2 * self.max_allocations:
            return None  # replacements in flight too: never more than twice the ceiling
        need = self.slots.unfit_duration()
        if need is None and self.slots.waiting <= self.slots.free():
            return None  # granted slots are about to be taken by the waiting work
        if need is not None:
            return max(self.walltime or 0.0, need + 2 * WALLTIME_MARGIN)
        return self.walltime or 0.0

    def _expiring(self, allocation: Allocation, now: float) -> bool:
        """In its last tenth (at least a minute, at most half of it): time to replace it, so
        work never waits for a fresh allocation."""
        if allocation.ends_at is None or allocation.duration is None:
            return False
        window = min(max(2 * WALLTIME_MARGIN, 0.1 * allocation.duration),
                     0.5 * allocation.duration)
        return allocation.ends_at - now < window

    async def _allocate(self, walltime: float, for_duration: float | None) -> None:
        self.emit(events.AllocationRequested(self.scheduler.kind))
        try:
            allocation = await self.scheduler.allocate(walltime or None)
        except OrchestraError as error:
            self._pending -= 1
            await self._failed(error, for_duration)
            return
        self._pending -= 1
        self._failures = 0
        self.live[allocation.id] = allocation
        self.on_granted(allocation)
        await self.slots.add(allocation)
        self.emit(events.AllocationGranted(
            allocation.id, tuple(n.name for n in allocation.nodes), allocation.slots,
            allocation.ends_at))
        self.wake()

    async def _failed(self, error: OrchestraError, for_duration: float | None) -> None:
        """A transient refusal (the controller timed out, the login connection dropped) is
        asked again with backoff while work waits. A refusal that cannot succeed fails the
        work waiting now, unless a live allocation or another request can still take it."""
        self._failures += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2.0 ** (self._failures - 1))
        self._retry_at = anyio.current_time() + delay
        transient = is_transient(error)
        self.emit(events.AllocationRefused(self.scheduler.kind, str(error),
                                           delay if transient or self.live else None))
        if transient or self.live or self._pending:
            log.warning("allocation request failed (%s; %d live), asking again in %.0f s",
                        error, len(self.live), delay)
            return
        await self.slots.fail(error if isinstance(error, SchedulerError)
                              else SchedulerError(str(error)), for_duration)

    async def _poll(self) -> None:
        try:
            ended = await self.scheduler.poll(list(self.live.values()))
        except OrchestraError as error:
            log.warning("polling %s failed: %s", self.scheduler.kind, error)
            return
        for allocation_id, reason in ended.items():
            allocation = self.live.pop(allocation_id, None)
            if allocation is not None:
                await self._withdraw(allocation, reason)

    async def _withdraw(self, allocation: Allocation, reason: str) -> None:
        await self.slots.withdraw(allocation.id)
        self._idle_since.pop(allocation.id, None)
        await self.on_ended(allocation, reason)
        self.emit(events.AllocationReleased(allocation.id, reason))
        self.wake()

    async def _give_back_idle(self, now: float) -> None:
        for allocation in list(self.live.values()):
            busy = self.slots.busy_in(allocation.id)
            if busy or self.slots.waiting:
                self._idle_since.pop(allocation.id, None)
                continue
            since = self._idle_since.setdefault(allocation.id, now)
            expired = allocation.ends_at is not None and allocation.ends_at <= now
            if now - since >= self.idle_timeout or expired:
                del self.live[allocation.id]
                await self.slots.withdraw(allocation.id)
                await self._release(allocation)
                self.emit(events.AllocationReleased(
                    allocation.id, "ended" if expired else "idle"))

    async def _release(self, allocation: Allocation) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(60):
            try:
                await self.scheduler.release(allocation)
            except OrchestraError as error:
                log.warning("releasing %s failed: %s", allocation.id, error)

    async def release_all(self) -> None:
        """Give every allocation back (engine shutdown), then let the scheduler sweep."""
        with anyio.CancelScope(shield=True):
            for allocation in list(self.live.values()):
                await self._release(allocation)
                self.emit(events.AllocationReleased(allocation.id, "engine closed"))
            self.live.clear()
            with anyio.move_on_after(60):
                try:
                    await self.scheduler.aclose()
                except OrchestraError as error:
                    log.warning("scheduler cleanup failed: %s", error)
