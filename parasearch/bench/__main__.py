"""``python -m parasearch.bench``: our samplers against Optuna's, side by side, in one run.

For each function, mode (sequential, or with workers always pending) and sampler, it prints
the median regret after N evaluations, the median number of evaluations to reach each
target regret, and the milliseconds spent per trial in ask+tell; Optuna's figures sit beside
ours with the ratio ours/Optuna (below 1 means ours is better). Optuna is optional: without
it, only our columns are printed. GP is run only up to ``--gp-budget`` evaluations (100 by
default), because each of its trials costs far more than the others'.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import Pool

import numpy as np

from parasearch.bench.functions import FUNCTIONS
from parasearch.bench.overhead import overhead_lines
from parasearch.bench.runner import (
    OPTUNA_SAMPLERS,
    optuna_available,
    run_optuna,
    run_ours,
)

_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _single_threaded_blas() -> None:
    """Re-run this command with one BLAS thread per process.

    The runs are parallel over seeds, and the matrices are small: threaded BLAS only adds
    contention. The variables must be set before numpy loads, hence the re-exec.
    """
    if all(os.environ.get(var) for var in _BLAS_VARS):
        return
    env = dict(os.environ)
    for var in _BLAS_VARS:
        env.setdefault(var, "1")
    os.execve(sys.executable, [sys.executable, "-m", "parasearch.bench", *sys.argv[1:]], env)


CHECKPOINTS = (25, 50, 100, 200)
DEFAULT_SAMPLERS = ("random", "qmc", "tpe", "cmaes", "gp")


def _job(args: tuple) -> tuple[np.ndarray, float]:
    who, sampler, fname, seed, budget, pending = args
    func = FUNCTIONS[fname]
    if who == "optuna":
        run = run_optuna(sampler, func, seed, budget, pending)
    else:
        run = run_ours(sampler, func, seed, budget, pending)
    regret = np.minimum.accumulate(run.values) - func.optimum
    return regret, 1000.0 * run.seconds / budget


def _summary(results: list[tuple[np.ndarray, float]], func, budget: int) -> dict:
    regrets = np.array([r for r, _ in results])
    out = {"ms": float(np.mean([ms for _, ms in results]))}
    for n in CHECKPOINTS:
        out[f"N={n}"] = float(np.median(regrets[:, n - 1])) if n <= budget else None
    for target in func.targets:
        reached = [
            int(np.argmax(r < target)) + 1 if np.any(r < target) else np.inf for r in regrets
        ]
        out[f"to<{target:g}"] = float(np.median(reached))
    return out


def _fmt(value: float | None, evals: bool = False) -> str:
    if value is None:
        return "-"
    if evals:
        return ">budget" if not np.isfinite(value) else f"{value:.0f}"
    return f"{value:.3g}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or not np.isfinite(ours) or not np.isfinite(theirs):
        return "-"
    if theirs == 0:
        return "-" if ours else "1"
    return f"{ours / theirs:.2g}"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _single_threaded_blas()
    parser = argparse.ArgumentParser(prog="python -m parasearch.bench", description=__doc__)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--gp-budget", type=int, default=100)
    parser.add_argument("--samplers", default=",".join(DEFAULT_SAMPLERS))
    parser.add_argument("--functions", default=",".join(FUNCTIONS))
    parser.add_argument("--pending", default="1,8", help="modes: 1 = sequential, k = k pending")
    parser.add_argument("--jobs", type=int, default=1, help="processes over seeds")
    parser.add_argument("--no-optuna", action="store_true")
    parser.add_argument(
        "--overhead", action="store_true", help="also time TPE at 1,000 trials and GP at 300 trials"
    )
    args = parser.parse_args(argv)

    samplers = [s for s in args.samplers.split(",") if s]
    functions = [f for f in args.functions.split(",") if f]
    modes = [int(p) for p in args.pending.split(",") if p]
    with_optuna = optuna_available() and not args.no_optuna
    if not with_optuna:
        print("Optuna is not installed (or --no-optuna): printing our figures only.")
    print(
        f"seeds 0..{args.seeds - 1}, budget {args.budget}; gp runs up to {args.gp_budget}"
        " evaluations only; 'pending k' keeps k trials asked and not told (FIFO)."
    )
    print(
        "regret = best value so far - optimum, median over seeds; to<t = median evaluations"
        " to reach regret < t; ratio = ours / optuna (< 1: ours better)."
    )
    started = time.time()
    pool = Pool(args.jobs) if args.jobs > 1 else None
    mapper = pool.map if pool else map
    header = (
        f"{'function':10}{'mode':11}{'sampler':8}{'metric':10}"
        f"{'ours':>10}{'optuna':>10}{'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for fname in functions:
        func = FUNCTIONS[fname]
        for pending in modes:
            mode = "sequential" if pending == 1 else f"pending {pending}"
            for sampler in samplers:
                budget = min(args.budget, args.gp_budget) if sampler == "gp" else args.budget
                jobs = [("ours", sampler, fname, s, budget, pending) for s in range(args.seeds)]
                ours = _summary(list(mapper(_job, jobs)), func, budget)
                theirs = None
                if with_optuna and sampler in OPTUNA_SAMPLERS:
                    jobs = [
                        ("optuna", sampler, fname, s, budget, pending) for s in range(args.seeds)
                    ]
                    theirs = _summary(list(mapper(_job, jobs)), func, budget)
                for metric in ours:
                    if metric.startswith("N=") and ours[metric] is None:
                        continue
                    evals = metric.startswith("to<")
                    other = theirs[metric] if theirs else None
                    print(
                        f"{fname:10}{mode:11}{sampler:8}{metric:10}"
                        f"{_fmt(ours[metric], evals):>10}{_fmt(other, evals):>10}"
                        f"{_ratio(ours[metric], other):>7}",
                        flush=True,
                    )
    if pool:
        pool.close()
    if args.overhead:
        for line in overhead_lines():
            print(line, flush=True)
    print(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
