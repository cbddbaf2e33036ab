"""Samplers behind one ask/tell API; ``create_sampler`` picks one by name."""

from __future__ import annotations

from typing import Any

from parasearch.samplers.asha import AshaSampler, HyperbandSampler
from parasearch.samplers.base import Sampler
from parasearch.samplers.cmaes import CmaEsSampler
from parasearch.samplers.gp import GPSampler
from parasearch.samplers.grid import GridSampler
from parasearch.samplers.qmc import QMCSampler
from parasearch.samplers.random import RandomSampler
from parasearch.samplers.tpe import TPESampler
from parasearch.space import Space

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (RandomSampler, GridSampler, QMCSampler, TPESampler, CmaEsSampler, GPSampler,
                AshaSampler, HyperbandSampler)
}


def create_sampler(
    name: str, space: Space, seed: int = 0, maximize: bool = False, **options: Any
) -> Sampler:
    """A sampler by name (``random``, ``grid``, ``qmc``, ``tpe``, ``cmaes``, ``gp``, ``asha``,
    ``hyperband``)."""
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}") from None
    return cls(space, seed=seed, maximize=maximize, **options)
