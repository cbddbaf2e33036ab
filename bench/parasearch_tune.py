"""Quick A/B of sampler options on a few seeds (development aid, not the benchmark)."""

import json
import sys
from multiprocessing import Pool

import numpy as np

from parasearch.bench.functions import FUNCTIONS
from parasearch.bench.runner import run_optuna, run_ours

CHECKS = (25, 50, 100, 200)


def job(args):
    who, sampler, fname, seed, budget, pending, options = args
    func = FUNCTIONS[fname]
    if who == "optuna":
        run = run_optuna(sampler, func, seed, budget, pending)
    else:
        run = run_ours(sampler, func, seed, budget, pending, **options)
    best = np.minimum.accumulate(run.values) - func.optimum
    return [float(best[n - 1]) for n in CHECKS if n <= budget], run.seconds / budget


def main():
    configs = json.loads(sys.argv[1])  # list of [label, who, sampler, options]
    seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    budget = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    modes = [int(m) for m in (sys.argv[4] if len(sys.argv) > 4 else "1,8").split(",")]
    funcs = (sys.argv[5] if len(sys.argv) > 5 else "branin,hartmann6").split(",")
    with Pool(2) as pool:
        for fname in funcs:
            for pending in modes:
                for label, who, sampler, options in configs:
                    jobs = [
                        (who, sampler, fname, s, budget, pending, options) for s in range(seeds)
                    ]
                    res = pool.map(job, jobs)
                    med = np.median(np.array([r[0] for r in res]), axis=0)
                    ms = 1000 * np.mean([r[1] for r in res])
                    cells = " ".join(f"{v:9.2e}" for v in med)
                    print(f"{fname:9s} p={pending} {label:24s} {cells}  {ms:6.1f}ms", flush=True)


if __name__ == "__main__":
    main()
