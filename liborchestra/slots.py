"""SlotPool: the free slots of all live allocations.

An execution waits here for a slot. A slot is not handed to an execution that declared a
duration longer than what is left of the slot's allocation (it would be killed at walltime).
Free slots are taken from the least busy node, so load spreads over nodes.
"""

from __future__ import annotations

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
        self.waiting = 0  # executions waiting for a slot: the demand that drives allocation

    @property
    def allocations(self) -> list[Allocation]:
        return list(self._live.values())

    def total(self) -> int:
        return sum(a.slots for a in self._live.values())

    def busy(self) -> int:
        return sum(self._busy.values())

    async def add(self, allocation: Allocation) -> None:
        async with self._changed:
            self._live[allocation.id] = allocation
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
            self.waiting += 1
            try:
                while True:
                    slot = self._pick(duration)
                    if slot is not None:
                        self._free.remove(slot)
                        self._busy[slot.node.name] = self._busy.get(slot.node.name, 0) + 1
                        return slot
                    await self._changed.wait()
            finally:
                self.waiting -= 1

    def _pick(self, duration: float | None) -> Slot | None:
        now = anyio.current_time()
        need = (duration or 0.0) + (WALLTIME_MARGIN if duration else 0.0)
        best, best_load = None, None
        for slot in self._free:
            if slot.remaining(now) < need:
                continue
            load = self._busy.get(slot.node.name, 0)
            if best_load is None or load < best_load:
                best, best_load = slot, load
        return best

    async def release(self, slot: Slot) -> None:
        async with self._changed:
            self._busy[slot.node.name] = max(0, self._busy.get(slot.node.name, 1) - 1)
            if slot.allocation.id in self._live:
                self._free.append(slot)
            self._changed.notify_all()
