"""Multi-fidelity search quality: parasearch's ASHA and Hyperband (in-process ask/tell) against
random search at full fidelity and Oríon 0.2.7's ASHA and Hyperband (its algorithm API, in its
own virtualenv, in a subprocess), on a synthetic learning-curve function, 30 seeds, the same
total fidelity budget: worth 30 full-fidelity evaluations.

Every tool is charged the same way: each evaluation costs its fidelity in full (a promotion
re-runs from scratch, as the script is re-run), one evaluation at a time, until the next one
would exceed the budget. One evaluation at a time favours synchronous algorithms (Oríon's
Hyperband waits for a rung to fill, which costs budget nothing when nothing runs beside it;
what asynchrony buys, no idle worker, is not measured here). Medians over 30 seeds move a lot
(random's median regret is 0.98 over seeds 0-29 and 1.29 over seeds 0-99): the table also
gives P(our ASHA lower): a run of ours against a run of the row's tool, over all pairs.

The function: Branin's x1, x2 set the loss a configuration converges to; x3 sets how slowly
it learns, which costs nothing at full fidelity but adds up to GAP to the loss at low
fidelity; every evaluation also has Gaussian noise of standard deviation NOISE / sqrt(epochs).
So low fidelities rank configurations noisily. Epochs: fidelity(1, 27, 3) (rungs 1, 3, 9, 27),
or fidelity(1, 81, 3) with --high 81. Each tool evaluates one trial at a time until the next
one would exceed the budget. Its answer is the configuration with the best observed value at
the highest fidelity it reached; regret = that configuration's noise-free full-fidelity loss
- Branin's optimum.

    .venv/bin/python -m bench.parasearch_fidelity [--quick] [--seeds 30] [--first-seed 0]
        [--high 27|81] [--json FILE]
    .venv/bin/python -m bench.parasearch_fidelity --time-at 1000   # ms per ask+tell

(run as `/work/bench-venv/bin/python bench/parasearch_fidelity.py --orion-worker` it is the
Oríon side; only numpy and orion are imported there.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

ORION_PYTHON = Path(os.environ.get("BENCH_ORION_PYTHON", "/work/bench-venv/bin/python"))
LOW, HIGH, BASE = 1, 27, 3  # HIGH: --high
FULL_EVALS = 30
BUDGET = FULL_EVALS * HIGH
GAP, NOISE = 50.0, 5.0
OPTIMUM = 0.397887
PRIORS = {"x1": "uniform(-5, 10)", "x2": "uniform(0, 15)", "x3": "uniform(0, 1)"}


def final_loss(p: dict) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def observed(p: dict, epochs: float, seed: int, index: int) -> float:
    """The loss after `epochs`: the final loss, a slow learner's gap, noise."""
    shrink = (math.sqrt(HIGH / epochs) - 1) / (math.sqrt(HIGH / LOW) - 1)  # 1 at LOW, 0 at HIGH
    noise = np.random.default_rng([seed, index, 7]).normal(0.0, NOISE / math.sqrt(epochs))
    return final_loss(p) + GAP * p["x3"] * shrink + float(noise)


def configure(high: int) -> None:
    """Full fidelity = `high` epochs; the budget stays worth FULL_EVALS evaluations of it."""
    global HIGH, BUDGET
    HIGH, BUDGET = high, FULL_EVALS * high


class Tally:
    """The budget spent and the evaluations made, for one run."""

    def __init__(self, seed: int) -> None:
        self.seed, self.spent, self.seen = seed, 0.0, []

    def fits(self, epochs: float) -> bool:
        return self.spent + epochs <= BUDGET + 1e-9

    def evaluate(self, p: dict, epochs: float) -> float:
        value = observed(p, epochs, self.seed, len(self.seen))
        self.spent += epochs
        self.seen.append((epochs, value, final_loss(p)))
        return value

    def regret(self) -> float:
        if not self.seen:
            return float("inf")
        top = max(e for e, _, _ in self.seen)
        _, _, true = min((s for s in self.seen if s[0] == top), key=lambda s: s[1])
        return true - OPTIMUM

    def result(self, seconds: float) -> dict:
        return {"regret": self.regret(), "evals": len(self.seen),
                "full": sum(1 for e, _, _ in self.seen if e == HIGH), "spent": self.spent,
                "seconds": seconds}


# -- ours ------------------------------------------------------------------------------------------

def run_ours(algo: str, seed: int) -> dict:
    from parasearch import Space, create_sampler

    priors = [f"{k}~{v}" for k, v in PRIORS.items()]
    priors.append(f"epochs~fidelity({LOW}, {HIGH}, {BASE})")
    sampler = create_sampler(algo, Space.parse(priors), seed=seed)
    tally, start = Tally(seed), time.perf_counter()
    while True:
        trial = sampler.ask()
        epochs = float(trial.params["epochs"])
        if not tally.fits(epochs):
            break
        sampler.tell(trial.id, tally.evaluate(trial.params, epochs))
    return tally.result(time.perf_counter() - start)


# -- Oríon (run in its virtualenv) --------------------------------------------------------------

def run_orion(seed: int, algo: str = "asha") -> dict:
    """Oríon's ASHA or Hyperband through its algorithm API (suggest/observe): the algorithm
    `orion hunt` and its client run, without the client's storage round trips (about 0.5 s
    per suggest with an EphemeralDB here, which would make 30 seeds take hours)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from orion.algo.asha.asha import ASHA
    from orion.algo.hyperband.hyperband import Hyperband
    from orion.core.io.space_builder import SpaceBuilder
    from orion.core.worker.trial import Trial

    space = SpaceBuilder().build({**PRIORS, "epochs": f"fidelity({LOW}, {HIGH}, base={BASE})"})
    algorithm = ASHA(space, seed=seed, num_brackets=1) if algo == "asha" else \
        Hyperband(space, seed=seed)
    tally, start = Tally(seed), time.perf_counter()
    while True:
        suggested = algorithm.suggest(1)
        if not suggested:  # Hyperband is done (every repetition) or waits: neither here
            break
        (trial,) = suggested
        epochs = float(trial.params["epochs"])
        if not tally.fits(epochs):
            break
        value = tally.evaluate(trial.params, epochs)
        trial.status = "completed"
        trial.results = [Trial.Result(name="objective", type="objective", value=value)]
        algorithm.observe([trial])
    return tally.result(time.perf_counter() - start)


def orion_worker(seeds: list[int]) -> None:
    for seed in seeds:
        for algo in ORION_ALGOS:
            print(json.dumps({"algo": algo, "seed": seed, **run_orion(seed, algo)}),
                  flush=True)


# -- the run ---------------------------------------------------------------------------------------

ORION_ALGOS = ("asha", "hyperband")
TOOLS = ("parasearch asha", "parasearch hyperband", "random, full fidelity",
         *(f"Oríon 0.2.7 {algo}" for algo in ORION_ALGOS))


def measure(seeds: int = 30, first: int = 0) -> dict:
    if not ORION_PYTHON.exists():
        raise SystemExit(f"bench: {ORION_PYTHON} is missing: python3 -m venv /work/bench-venv "
                         "&& /work/bench-venv/bin/pip install orion==0.2.7 typing_extensions")
    # Oríon's side runs in its own process meanwhile (quality does not depend on load)
    orion = subprocess.Popen([str(ORION_PYTHON), __file__, "--orion-worker", "--seeds",
                              str(seeds), "--first-seed", str(first), "--high", str(HIGH)],
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    results: dict[str, list[dict]] = {tool: [] for tool in TOOLS}  # Oríon's: when it ends
    for seed in range(first, first + seeds):
        results["parasearch asha"].append(run_ours("asha", seed))
        results["parasearch hyperband"].append(run_ours("hyperband", seed))
        results["random, full fidelity"].append(run_ours("random", seed))
    out, err = orion.communicate()
    if orion.returncode != 0:
        raise SystemExit(f"bench: the Oríon worker failed:\n{err[-3000:]}")
    for line in out.splitlines():
        if line:
            run = json.loads(line)
            results[f"Oríon 0.2.7 {run.pop('algo')}"].append(run)
    return {"seeds": seeds, "first": first, "high": HIGH, "results": results}


def summary(result: dict) -> list[dict]:
    rows = []
    ours = np.array([r["regret"] for r in result["results"]["parasearch asha"]])
    asha = float(np.median(ours))
    for tool, runs in result["results"].items():
        regret = statistics.median(r["regret"] for r in runs)
        theirs = np.array([r["regret"] for r in runs])
        # P(a run of our ASHA ends with lower regret than a run of this tool), ties half
        better = float(np.mean((ours[:, None] < theirs[None, :])
                               + 0.5 * (ours[:, None] == theirs[None, :])))
        rows.append({"tool": tool, "regret": regret, "ratio": asha / regret, "better": better,
                     "q1": float(np.percentile([r["regret"] for r in runs], 25)),
                     "q3": float(np.percentile([r["regret"] for r in runs], 75)),
                     "evals": statistics.median(r["evals"] for r in runs),
                     "full": statistics.median(r["full"] for r in runs),
                     "ms": statistics.median(1000 * r["seconds"] / max(1, r["evals"])
                                             for r in runs)})
    return rows


def print_table(result: dict, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"multi-fidelity search, budget {BUDGET} epochs (= {FULL_EVALS} "
                        f"evaluations at {HIGH}), medians over seeds {result['first']}-"
                        f"{result['first'] + result['seeds'] - 1}",
                  caption=f"learning-curve Branin: gap {GAP} x x3 at low fidelity, noise "
                          f"{NOISE}/sqrt(epochs); ratio = parasearch asha / the row's regret")
    for column in ("tool", "median regret", "IQR", "ratio", "P(our asha lower)",
                   "evaluations", "at full fidelity", "ms per ask+tell"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["tool"], f"{r['regret']:.3g}", f"{r['q1']:.3g}-{r['q3']:.3g}",
                      f"{r['ratio']:.2f}", f"{r['better']:.2f}", f"{r['evals']:.0f}",
                      f"{r['full']:.0f}", f"{r['ms']:.2f}")
    Console(width=160).print(table)
    by = {r["tool"]: r["regret"] for r in rows}
    for ours in ("parasearch asha", "parasearch hyperband"):
        peers = ["random, full fidelity", *(f"Oríon 0.2.7 {a}" for a in ORION_ALGOS)]
        verdicts = ", ".join(f"{p}: {'ahead' if by[ours] < by[p] else 'NOT ahead'}"
                             for p in peers)
        print(f"target: {ours} ahead of random and of Oríon -> {verdicts}")


def ask_tell_ms(algo: str, trials: int = 1000, steps: int = 200) -> dict:
    """The sampler's time per ask+tell once `trials` are recorded (told at once, one at a
    time): the steps after `trials`, median and worst."""
    from parasearch import Space, create_sampler

    priors = [f"{k}~{v}" for k, v in PRIORS.items()]
    priors.append(f"epochs~fidelity({LOW}, {HIGH}, {BASE})")
    sampler = create_sampler(algo, Space.parse(priors), seed=0)
    tally, times = Tally(0), []
    for _ in range(trials + steps):
        start = time.perf_counter()
        trial = sampler.ask()
        sampler.tell(trial.id, tally.evaluate(trial.params, float(trial.params["epochs"])))
        times.append(1000 * (time.perf_counter() - start))
    return {"median": statistics.median(times[trials:]), "max": max(times[trials:])}


def run(quick: bool = False) -> list[dict]:
    """For bench.run: rows of the umbrella table (ratio: ours (asha) / this row's regret)."""
    result = measure(seeds=10 if quick else 30)
    return [{"benchmark": f"multi-fidelity regret, {FULL_EVALS} full evals of budget",
             "tool": r["tool"], "value": r["regret"], "unit": "median regret",
             "ratio": r["ratio"], "cpu_ms": None} for r in summary(result)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 seeds")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first..first+seeds-1 (another range guards against "
                             "improvements fitted to seeds 0-29)")
    parser.add_argument("--high", type=int, default=HIGH, help="full fidelity (epochs)")
    parser.add_argument("--orion-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument("--time-at", type=int, metavar="TRIALS",
                        help="only time our samplers' ask+tell after TRIALS trials")
    options = parser.parse_args()
    seeds = 10 if options.quick else options.seeds
    configure(options.high)
    if options.orion_worker:
        orion_worker(list(range(options.first_seed, options.first_seed + seeds)))
        return
    if options.time_at:
        for algo in ("asha", "hyperband"):
            ms = ask_tell_ms(algo, options.time_at)
            print(f"{algo}: ask+tell after {options.time_at} trials: median {ms['median']:.2f} "
                  f"ms, worst {ms['max']:.2f} ms")
        return
    result = measure(seeds, options.first_seed)
    print_table(result, summary(result))
    if options.json:
        options.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
