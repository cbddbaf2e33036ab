"""Executions of `true` on the 3 test-bed nodes: the engine's full lifecycle (run folder, code
present, wrapper, results packed and fetched, run folder removed) against a raw asyncssh loop
running `true` with the same channel count, measured in the same run, interleaved."""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from pathlib import Path

from bench import raw_loop, scratch
from bench.raw_loop import CHANNELS, NODES
from liborchestra import Engine, Execution, State
from liborchestra.profile import parse_profile


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _raw(testbed, n: int) -> None:
    await raw_loop.loop(testbed.user, str(testbed.key), str(testbed.known_hosts), n)


async def _engine(testbed, n: int, code: Path) -> None:
    profile = parse_profile({
        "name": "bench",
        "ssh": {"user": testbed.user, "identity": [str(testbed.key)],
                "known_hosts": str(testbed.known_hosts)},
        "scheduler": {"kind": "hosts",
                      "hosts": [{"host": h, "slots": CHANNELS} for h in NODES]},
        "directory": "~/.orchestra-bench"}, "<bench>")
    async with Engine(profile) as engine:
        results = await asyncio.gather(*[engine.submit(Execution(code / "true.sh"))
                                         for _ in range(n)])
    bad = [r for r in results if r.state is not State.COMPLETED]
    assert not bad, bad[0]


def _measure(coro_factory) -> tuple[float, float]:
    cpu, wall = _cpu(), time.perf_counter()
    asyncio.run(coro_factory())
    return time.perf_counter() - wall, _cpu() - cpu


def run(testbed, n: int = 600, repeats: int = 3, keep_in: str | None = None) -> list[dict]:
    with scratch.folder(keep_in) as tmp:
        code = Path(tmp)
        (code / "true.sh").write_text("true\n")
        asyncio.run(_engine(testbed, 24, code))  # warm: code shipped, connections learnt
        raw, ours = [], []
        for _ in range(repeats):
            raw.append(_measure(lambda: _raw(testbed, n)))
            ours.append(_measure(lambda: _engine(testbed, n, code)))
    raw_rate = statistics.median(n / wall for wall, _ in raw)
    our_rate = statistics.median(n / wall for wall, _ in ours)
    return [
        {"benchmark": f"exec `true` x{n}, 3 nodes x {CHANNELS} channels",
         "tool": "runaway engine (full lifecycle)", "value": our_rate, "unit": "exec/s",
         "ratio": our_rate / raw_rate,
         "cpu_ms": statistics.median(cpu / n * 1000 for _, cpu in ours)},
        {"benchmark": f"exec `true` x{n}, 3 nodes x {CHANNELS} channels",
         "tool": "raw asyncssh loop (conn.run)", "value": raw_rate, "unit": "exec/s",
         "ratio": 1.0, "cpu_ms": statistics.median(cpu / n * 1000 for _, cpu in raw)},
    ]
