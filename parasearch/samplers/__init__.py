"""Samplers behind one ask/tell API; ``create_sampler`` picks one by name.

Each algorithm's module is imported when it is asked for: CMA-ES and QMC pull in scipy.stats,
which would cost every `parasearch` command a second of start-up."""

from __future__ import annotations

import importlib
from typing import Any

from parasearch.samplers.base import Sampler
from parasearch.space import Space

# name -> (module, class)
SAMPLERS: dict[str, tuple[str, str]] = {
    "random": ("random", "RandomSampler"),
    "grid": ("grid", "GridSampler"),
    "qmc": ("qmc", "QMCSampler"),
    "tpe": ("tpe", "TPESampler"),
    "cmaes": ("cmaes", "CmaEsSampler"),
    "gp": ("gp", "GPSampler"),
    "asha": ("asha", "AshaSampler"),
    "hyperband": ("asha", "HyperbandSampler"),
}


def sampler_class(name: str) -> type[Sampler]:
    try:
        module, cls = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}") from None
    return getattr(importlib.import_module(f"parasearch.samplers.{module}"), cls)


def create_sampler(
    name: str, space: Space, seed: int = 0, maximize: bool = False, **options: Any
) -> Sampler:
    """A sampler by name (``random``, ``grid``, ``qmc``, ``tpe``, ``cmaes``, ``gp``, ``asha``,
    ``hyperband``)."""
    return sampler_class(name)(space, seed=seed, maximize=maximize, **options)
