"""Sampler overhead at scale: milliseconds per ask+tell late in a long search."""

from __future__ import annotations

import time

from parasearch import Space, create_sampler
from parasearch.bench.functions import FUNCTIONS


def time_per_trial(sampler: str, func_name: str, trials: int, window: int, seed: int = 0):
    """Seconds per ask+tell averaged over the last ``window`` of ``trials`` trials."""
    func = FUNCTIONS[func_name]
    opt = create_sampler(sampler, Space.parse(func.priors), seed=seed)
    spent = 0.0
    for i in range(trials):
        start = time.perf_counter()
        trial = opt.ask()
        elapsed = time.perf_counter() - start
        value = func.evaluate(trial.params)
        start = time.perf_counter()
        opt.tell(trial.id, value)
        elapsed += time.perf_counter() - start
        if i >= trials - window:
            spent += elapsed
    return spent / window


def overhead_lines() -> list[str]:
    tpe = time_per_trial("tpe", "hartmann6", 1000, 100)
    gp = time_per_trial("gp", "hartmann6", 300, 20)
    return [
        f"overhead: tpe {1000 * tpe:.2f} ms per trial at trials 901-1000 (hartmann6; target 5 ms)",
        f"overhead: gp {gp:.3f} s per trial at trials 281-300 (hartmann6; target 0.5 s)",
    ]
