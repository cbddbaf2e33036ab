"""The slot pool: who gets a freed slot, walltime fit, least busy node first, refusals,
quarantine, and a slot handed to an execution cancelled before it could take it."""

from __future__ import annotations

import anyio
import pytest

from liborchestra.schedulers.base import Allocation, Node
from liborchestra.slots import WALLTIME_MARGIN, SlotPool


def _run(main):
    return anyio.run(main, backend="asyncio")


def _allocation(name: str, nodes: dict[str, int], ends_at: float | None = None) -> Allocation:
    return Allocation(name, tuple(Node(n, None, "fs", tuple(str(i) for i in range(k)))
                                  for n, k in nodes.items()), ends_at=ends_at)


async def _pool(nodes: dict[str, int]) -> SlotPool:
    """A pool with one allocation, "a", of these nodes and slot counts."""
    pool = SlotPool()
    await pool.add(_allocation("a", nodes))
    return pool


def test_a_freed_slot_goes_to_the_first_waiter_alone():
    async def main():
        pool = await _pool({"n1": 1})
        held = await pool.acquire()
        order: list[int] = []

        async def wait(i: int) -> None:
            slot = await pool.acquire()
            order.append(i)
            await anyio.sleep(0.01)
            await pool.release(slot)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(wait, i)
                await anyio.sleep(0)  # arrive in this order
            await anyio.sleep(0.01)
            assert pool.waiting == 5 and order == []
            await pool.release(held)
        assert order == [0, 1, 2, 3, 4]
        assert pool.free() == 1 and pool.busy() == 0 and pool.waiting == 0
    _run(main)


def test_work_too_long_for_a_slot_lets_shorter_work_behind_it_take_it():
    async def main():
        pool = SlotPool()
        now = anyio.current_time()
        await pool.add(_allocation("short", {"n1": 1}, ends_at=now + WALLTIME_MARGIN + 60))
        got: dict[str, str] = {}

        async def want(name: str, duration: float) -> None:
            got[name] = (await pool.acquire(duration)).allocation.id

        async with anyio.create_task_group() as tg:
            tg.start_soon(want, "long", 3600.0)
            await anyio.sleep(0)
            tg.start_soon(want, "quick", 10.0)
            await anyio.sleep(0.01)
            assert got == {"quick": "short"} and pool.waiting == 1
            assert pool.unfit_duration() == 3600.0  # the demand the allocator must meet
            await pool.add(_allocation("long", {"n2": 1}))
        assert got == {"quick": "short", "long": "long"}
    _run(main)


def test_slots_come_from_the_least_busy_node():
    async def main():
        pool = await _pool({"n1": 3, "n2": 3})
        nodes = [(await pool.acquire()).node.name for _ in range(4)]
        assert sorted(nodes) == ["n1", "n1", "n2", "n2"]
    _run(main)


def test_a_slot_handed_to_a_cancelled_waiter_goes_back():
    async def main():
        pool = await _pool({"n1": 1})
        held = await pool.acquire()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.acquire)
                await anyio.sleep(0.01)
                scope.cancel()  # the waiter's cancellation is on its way...
                await pool.release(held)  # ...when the slot is handed to it (no checkpoint)
        assert pool.free() == 1 and pool.busy() == 0 and pool.waiting == 0
        assert (await pool.acquire()).node.name == "n1"
    _run(main)


def test_a_refusal_fails_waiting_work_and_a_grant_lifts_it():
    async def main():
        pool = SlotPool()
        failures: list[str] = []

        async def want(duration: float | None) -> None:
            try:
                await pool.acquire(duration)
            except RuntimeError as error:
                failures.append(str(error))

        async with anyio.create_task_group() as tg:
            tg.start_soon(want, 7200.0)
            tg.start_soon(want, 60.0)
            await anyio.sleep(0.01)
            await pool.fail(RuntimeError("walltime too long"), longer_than=3600.0)
            await anyio.sleep(0.01)
            assert failures == ["walltime too long"] and pool.waiting == 1
            await pool.add(_allocation("a", {"n1": 1}))
        with pytest.raises(RuntimeError):
            await pool.fail(RuntimeError("no"))
            await pool.acquire()
    _run(main)


def test_a_quarantined_node_gets_work_again_when_its_quarantine_ends():
    async def main():
        pool = await _pool({"n1": 1})
        await pool.quarantine("n1", 0.2)
        start = anyio.current_time()
        with anyio.fail_after(5):
            slot = await pool.acquire()
        assert slot.node.name == "n1" and anyio.current_time() - start >= 0.15
    _run(main)


def test_a_withdrawn_allocation_hands_out_nothing_more():
    async def main():
        pool = await _pool({"n1": 2})
        slot = await pool.acquire()
        await pool.withdraw("a")
        await pool.release(slot)  # a busy slot of a withdrawn allocation is not taken back
        assert pool.free() == 0 and pool.total() == 0
        with anyio.move_on_after(0.05) as scope:
            await pool.acquire()
        assert scope.cancelled_caught
    _run(main)
