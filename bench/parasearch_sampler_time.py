"""Sampler time per trial of a parasearch driver with 1,000 completed trials in the shared
store: TPE, 8 trials in flight, SQLite and the test bed's PostgreSQL, in-process.

The store is filled through parasearch.store.Store (1,000 random trials reserved, then
finished with their Branin value, as one sequential driver would have left them). Then a
SearchSource (the driver's source: `next` asks, the store records) runs with 8 trials always
in flight, FIFO: each step finishes the oldest (`SearchSource.record`, what `done` does with
the store: the result stored and the news read back in one transaction) and asks one more
(`SearchSource.next(1)`: the ask transaction, the replay of new history into the sampler,
the sampler's ask, the reservation). No executions run; the time is the driver's per-trial
sampler + store cost.

    .venv/bin/python -m bench.parasearch_sampler_time [--quick] [--steps 200] [--repeats 3]
        [--history 1000] [--no-postgres]

The PostgreSQL URL is the bed's (/tmp/testbed/cluster/testbed.json, key "postgres"); each run
uses its own search name and deletes its rows afterwards. Stores are interleaved run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

TESTBED = Path("/tmp/testbed/cluster/testbed.json")
PRIORS = ["--x1~uniform(-5, 10)", "--x2~uniform(0, 15)"]
IN_FLIGHT = 8
TARGETS_MS = {"SQLite": 10.0, "PostgreSQL": 20.0}


def branin(params: dict) -> float:
    x1, x2 = params["x1"], params["x2"]
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def postgres_url() -> str | None:
    try:
        return json.loads(TESTBED.read_text()).get("postgres")
    except (OSError, ValueError):
        return None


def _fill(store, space, history: int, meta: dict) -> float:
    """`history` completed trials, asked and told in turn as by one sequential driver."""
    from parasearch import create_sampler
    from parasearch.store import COMPLETED

    start = time.perf_counter()
    store.create(meta)
    sampler = create_sampler("random", space, seed=12345)
    asked = [sampler.ask() for _ in range(history)]
    with store.asking() as db:
        for trial in asked:
            store.reserve(db, trial.id, trial.params, trial.id, "filler", 3600.0,
                          str(uuid.uuid4()))
    for trial in asked:
        store.finish(trial.id, "filler", COMPLETED, branin(trial.params), {}, "", "local",
                     time.time())
    return time.perf_counter() - start


def _drop(store) -> None:
    from parasearch.store import searches, trials

    with store.engine.begin() as db:
        db.execute(trials.delete().where(trials.c.search == store.name))
        db.execute(searches.delete().where(searches.c.name == store.name))


async def _drive(source, steps: int) -> dict[str, list[float]]:
    from parasearch.store import COMPLETED

    spent = {"ask": [], "tell": [], "sampler": []}
    inner = source.sampler.ask
    sampler_time = [0.0]

    def timed_ask():  # instrumentation only: the sampler's own share of `next`
        start = time.perf_counter()
        try:
            return inner()
        finally:
            sampler_time[0] += time.perf_counter() - start

    source.sampler.ask = timed_ask
    start = time.perf_counter()
    flight = list(await source.next(IN_FLIGHT))
    spent["first"] = [time.perf_counter() - start]  # replays the 1,000 trials into TPE
    assert len(flight) == IN_FLIGHT, len(flight)
    for _ in range(steps):
        oldest = flight.pop(0)
        params, number = oldest.payload["params"], oldest.payload["number"]
        start = time.perf_counter()
        kept = source.record(number, COMPLETED, branin(params), {}, "", "local",
                             time.time())
        spent["tell"].append(time.perf_counter() - start)
        assert kept
        sampler_time[0] = 0.0
        start = time.perf_counter()
        work = await source.next(1)
        spent["ask"].append(time.perf_counter() - start)
        spent["sampler"].append(sampler_time[0])
        assert work is not None and len(work) == 1, work
        flight += work
    return spent


def one_run(url_for, label: str, history: int, steps: int, folder: Path) -> dict:
    from parasearch.arguments import search_space
    from parasearch.search import SearchSettings, SearchSource
    from parasearch.store import Store, store_url

    template, space, priors = search_space(PRIORS)
    name = f"bench-{uuid.uuid4().hex[:10]}"
    store = Store(store_url(url_for(folder / name), folder / name), name)
    try:
        meta = {"name": name, "template": [list(p) for p in template.parts], "priors": priors,
                "algo": "tpe", "n": history + steps + 2 * IN_FLIGHT, "seed": 0,
                "maximize": False, "max_broken": 10, "created": time.time()}
        fill = _fill(store, space, history, meta)
        settings = SearchSettings(script=folder / "branin.py", output=folder / name,
                                  template=template, space=space, algo="tpe",
                                  n=meta["n"], seed=0, lease=600.0)
        source = SearchSource(None, settings, store, "bench-driver")  # no engine: no runs
        spent = asyncio.run(_drive(source, steps))
    finally:
        _drop(store)
        store.close()
    return {"store": label, "fill_s": fill, **spent}


def measure(history: int = 1000, steps: int = 200, repeats: int = 3,
            postgres: bool = True) -> dict:
    stores = {"SQLite": lambda folder: None}
    url = postgres_url() if postgres else None
    if postgres and url is None:
        print(f"bench: no PostgreSQL URL in {TESTBED}: SQLite only", file=sys.stderr)
    if url:
        stores["PostgreSQL"] = lambda folder: url
    runs: dict[str, list[dict]] = {label: [] for label in stores}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="parasearch-sampler-") as tmp:
        for rep in range(repeats):
            for label, url_for in stores.items():
                result = one_run(url_for, label, history, steps, Path(tmp))
                runs[label].append(result)
                total = [a + t for a, t in zip(result["ask"], result["tell"], strict=True)]
                print(f"  repeat {rep + 1}/{repeats} {label:10s} fill {result['fill_s']:.1f} s"
                      f", per trial median {1000 * statistics.median(total):.1f} ms",
                      file=sys.stderr, flush=True)
            load.append(os.getloadavg()[0])
    return {"history": history, "steps": steps, "repeats": repeats, "runs": runs,
            "load": load}


def _ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def summary(result: dict) -> list[dict]:
    out = []
    for label, runs in result["runs"].items():
        def med(key, runs=runs):  # median over repeats of each run's median
            return statistics.median(_ms(r[key]) for r in runs)
        totals = [[a + t for a, t in zip(r["ask"], r["tell"], strict=True)] for r in runs]
        total = statistics.median(_ms(t) for t in totals)
        p90 = statistics.median(1000 * sorted(t)[int(0.9 * len(t))] for t in totals)
        out.append({"store": label, "total": total, "p90": p90, "ask": med("ask"),
                    "sampler": med("sampler"), "tell": med("tell"),
                    "first": statistics.median(1000 * r["first"][0] for r in runs),
                    "target": TARGETS_MS[label]})
    return out


def print_table(result: dict, table: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    load = ", ".join(f"{x:.2f}" for x in result["load"])
    grid = Table(title=f"parasearch driver, TPE, {IN_FLIGHT} in flight, "
                       f"{result['history']} completed trials in the store, then "
                       f"{result['steps']} more (ms per trial; medians of "
                       f"{result['repeats']} interleaved runs)",
                 caption=f"1-min load average before and after each round: {load} on "
                         f"{os.cpu_count()} cores shared with other work")
    for column in ("store", "per trial (ask+tell)", "p90", "next(1)", "of which sampler.ask",
                   "record (finish+catch-up)", "first next(8) (replay)", "target", "verdict"):
        grid.add_column(column)
    for r in table:
        grid.add_row(r["store"], f"{r['total']:.1f}", f"{r['p90']:.1f}", f"{r['ask']:.1f}",
                     f"{r['sampler']:.1f}", f"{r['tell']:.1f}", f"{r['first']:.0f}",
                     f"<= {r['target']:.0f}", "met" if r["total"] <= r["target"] else "MISSED")
    Console(width=160).print(grid)


def run(quick: bool = False) -> list[dict]:
    """For bench.run: rows of the umbrella table (ratio: target / measured)."""
    result = measure(steps=50 if quick else 200, repeats=1 if quick else 3)
    return [{"benchmark": f"parasearch TPE per trial, {result['history']} in store, "
                          f"{IN_FLIGHT} in flight", "tool": f"parasearch ({r['store']})",
             "value": r["total"], "unit": "ms/trial", "ratio": r["target"] / r["total"],
             "cpu_ms": None} for r in summary(result)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 steps, one run per store")
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw times here")
    options = parser.parse_args()
    result = measure(history=options.history, steps=50 if options.quick else options.steps,
                     repeats=1 if options.quick else options.repeats,
                     postgres=not options.no_postgres)
    print_table(result, summary(result))
    if options.json:
        options.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
