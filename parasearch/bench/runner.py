"""Run one sampler (ours or Optuna's) on one function, sequentially or with workers pending.

"pending = k" simulates k asynchronous workers as a FIFO: k trials are always asked and not
yet told, and the oldest is told first. ``pending = 1`` is the sequential case.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from typing import Any

import attrs
import numpy as np

from parasearch import SearchExhausted, Space, create_sampler
from parasearch.bench.functions import Function
from parasearch.space import Categorical, Integer, Real


@attrs.frozen
class Run:
    """The values in the order they were told, and the seconds spent in ask and tell."""

    values: np.ndarray
    seconds: float


def run_ours(
    sampler: str, func: Function, seed: int, budget: int, pending: int, **options: Any
) -> Run:
    space = Space.parse(func.priors)
    opt = create_sampler(sampler, space, seed=seed, **options)
    queue: deque = deque()
    values: list[float] = []
    spent = 0.0
    asked = 0
    while len(values) < budget:
        while len(queue) < pending and asked < budget:
            start = time.perf_counter()
            try:
                queue.append(opt.ask())
            except SearchExhausted:
                asked = budget  # a finite sampler ran out: tell what is pending, then stop
                break
            spent += time.perf_counter() - start
            asked += 1
        if not queue:
            break
        trial = queue.popleft()
        value = func.evaluate(trial.params)
        start = time.perf_counter()
        opt.tell(trial.id, value)
        spent += time.perf_counter() - start
        values.append(value)
    # Evaluations never made count as no improvement.
    values += [np.inf] * (budget - len(values))
    return Run(np.array(values), spent)


def optuna_available() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


OPTUNA_SAMPLERS = ("random", "qmc", "tpe", "cmaes")


def run_optuna(sampler: str, func: Function, seed: int, budget: int, pending: int) -> Run:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    factories = {
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "qmc": lambda: optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
    }
    study = optuna.create_study(sampler=factories[sampler]())
    dists = _distributions(Space.parse(func.priors))
    queue: deque = deque()
    values: list[float] = []
    spent = 0.0
    asked = 0
    while len(values) < budget:
        while len(queue) < pending and asked < budget:
            start = time.perf_counter()
            queue.append(study.ask(dists))
            spent += time.perf_counter() - start
            asked += 1
        trial = queue.popleft()
        value = func.evaluate(trial.params)
        start = time.perf_counter()
        study.tell(trial, value)
        spent += time.perf_counter() - start
        values.append(value)
    return Run(np.array(values), spent)


def _distributions(space: Space) -> dict:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    dists = {}
    for dim in space:
        if isinstance(dim, Real):
            dists[dim.name] = FloatDistribution(dim.low, dim.high, log=dim.log)
        elif isinstance(dim, Integer):
            dists[dim.name] = IntDistribution(dim.low, dim.high, log=dim.log)
        elif isinstance(dim, Categorical):
            dists[dim.name] = CategoricalDistribution(list(dim.choices))
        else:
            raise ValueError(f"the Optuna runner does not handle {dim!r}")
    return dists
