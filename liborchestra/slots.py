"""SlotPool: the free slots of all live allocations.

An execution waits here for a slot. A slot is not handed to an execution that declared a
duration longer than what is left of the slot's allocation (it would be killed at walltime).
Free slots are taken from the least busy node, so load spreads over nodes.
"""

from __future__ import annotations

from typing import Callable

import anyio
import attrs

from liborchestra.schedulers.base import Allocation, Node

WALLTIME_MARGIN = 30.0  # seconds kept between an execution's expected end and the walltime


@attrs.frozen
class Slot:
    allocation: Allocation
    node: Node
    handle: str

    def remaining(self, now: float) -> float:
        ends = self.allocation.ends_at
        return float("inf") if ends is None else ends - now


class SlotPool:
    def __init__(self) -> None:
        self._free: list[Slot] = []
        self._busy: dict[str, int] = {}  # node name -> busy slots
        self._live: dict[str, Allocation] = {}
        self._changed = anyio.Condition()
        self._waiting: list[float | None] = []  # declared durations of waiting executions
        self._error: Exception | None = None  # a refusal that cannot succeed (until a grant)
        self._error_above: float | None = None
        self.on_wait: Callable[[], None] = lambda: None  # told when work starts waiting
        self._quarantine: dict[str, float] = {}  # node -> until when it gets no work

    @property
    def waiting(self) -> int:
        """Executions waiting for a slot: the demand that drives allocation."""
        return len(self._waiting)

    @property
    def allocations(self) -> list[Allocation]:
        return list(self._live.values())

    def total(self) -> int:
        return sum(a.slots for a in self._live.values())

    def busy(self) -> int:
        return sum(self._busy.values())

    def free(self) -> int:
        return len(self._free)

    def busy_in(self, allocation_id: str) -> int:
        allocation = self._live.get(allocation_id)
        if allocation is None:
            return 0
        free = sum(1 for s in self._free if s.allocation.id == allocation_id)
        return allocation.slots - free

    def unfit_duration(self) -> float | None:
        """The longest declared duration among waiting work that no live allocation can hold."""
        now = anyio.current_time()
        room = max((float("inf") if a.ends_at is None else a.ends_at - now
                    for a in self._live.values()), default=float("-inf"))
        unfit = [d for d in self._waiting if d is not None and d + WALLTIME_MARGIN > room]
        return max(unfit, default=None)

    async def quarantine(self, node: str, seconds: float) -> None:
        """Hand out no slot of `node` for a while (it could not be reached)."""
        async with self._changed:
            self._quarantine[node] = anyio.current_time() + seconds

    async def fail(self, error: Exception, longer_than: float | None = None) -> None:
        """A request that cannot succeed was refused: waiting work raises it, and so does work
        that arrives until an allocation is granted, since the same request would be refused
        again. With `longer_than` (the refused request was for work that declared that long a
        duration), only work declaring at least that long fails: shorter work may still get
        an allocation of the profile's walltime."""
        async with self._changed:
            self._error, self._error_above = error, longer_than
            self._changed.notify_all()

    def _refused(self, duration: float | None) -> bool:
        if self._error is None:
            return False
        return self._error_above is None or (duration or 0.0) >= self._error_above

    async def add(self, allocation: Allocation) -> None:
        async with self._changed:
            self._live[allocation.id] = allocation
            self._error = None
            for node in allocation.nodes:
                self._busy.setdefault(node.name, 0)
                self._free.extend(Slot(allocation, node, h) for h in node.handles)
            self._changed.notify_all()

    async def withdraw(self, allocation_id: str) -> None:
        """Forget an allocation: its free slots vanish, its busy slots are not taken back."""
        async with self._changed:
            self._live.pop(allocation_id, None)
            self._free = [s for s in self._free if s.allocation.id != allocation_id]
            self._changed.notify_all()

    async def acquire(self, duration: float | None = None) -> Slot:
        """Wait for a free slot whose allocation lasts long enough for `duration` seconds."""
        async with self._changed:
            self._waiting.append(duration)
            self.on_wait()
            try:
                while True:
                    slot = self._pick(duration)
                    if slot is not None:
                        self._free.remove(slot)
                        self._busy[slot.node.name] = self._busy.get(slot.node.name, 0) + 1
                        return slot
                    if self._refused(duration):
                        raise self._error
                    with anyio.move_on_after(self._next_release()):
                        await self._changed.wait()
            finally:
                self._waiting.remove(duration)

    def _pick(self, duration: float | None) -> Slot | None:
        now = anyio.current_time()
        need = (duration or 0.0) + WALLTIME_MARGIN
        best, best_load = None, None
        for slot in self._free:
            if slot.remaining(now) < need or self._quarantine.get(slot.node.name, 0) > now:
                continue
            load = self._busy.get(slot.node.name, 0)
            if best_load is None or load < best_load:
                best, best_load = slot, load
        return best

    def _next_release(self) -> float:
        """How long until a quarantined node may take work again (wake up then)."""
        now = anyio.current_time()
        ends = [until - now for until in self._quarantine.values() if until > now]
        return min(ends, default=float("inf"))

    async def release(self, slot: Slot) -> None:
        async with self._changed:
            self._busy[slot.node.name] = max(0, self._busy.get(slot.node.name, 1) - 1)
            if slot.allocation.id in self._live:
                self._free.append(slot)
            self._changed.notify_all()
