"""Quasi-random search: a scrambled Sobol sequence, spread more evenly than random draws."""

from __future__ import annotations

import numpy as np
from scipy.stats import qmc

from parasearch.samplers._transform import UnitTransform
from parasearch.samplers.base import Sampler
from parasearch.space import Space


class SobolStream:
    """The i-th point of one scrambled Sobol sequence, as coordinates of a transform."""

    def __init__(self, transform: UnitTransform, seed: int) -> None:
        self.transform = transform
        self._width = max(transform.ndim, 1)
        self._engine = qmc.Sobol(self._width, scramble=True, seed=seed)
        self._points = np.empty((0, self._width))

    def point(self, i: int) -> np.ndarray:
        while i >= len(self._points):
            # Draw in powers of two, keeping the sequence's balance properties.
            more = self._engine.random_base2(max(int(np.log2(max(len(self._points), 1))), 4))
            self._points = np.vstack([self._points, more])
        u = self._points[i, : self.transform.ndim].copy()
        t = self.transform
        for j, dim in enumerate(t.dims):
            if t.is_categorical[j]:
                cumulative = np.cumsum(dim.probs)
                u[j] = min(int(np.searchsorted(cumulative, u[j], side="right")), len(dim.probs) - 1)
        return u


class QMCSampler(Sampler):
    """The i-th ask takes the i-th point of one scrambled Sobol sequence fixed by the seed.

    Categorical coordinates go through the inverse CDF of the choice probabilities, so the
    low discrepancy carries over to them and their weights are respected.
    """

    name = "qmc"

    def __init__(self, space: Space, seed: int = 0, maximize: bool = False) -> None:
        super().__init__(space, seed, maximize)
        self._stream = SobolStream(self.transform, self.seed)

    def _suggest(self, rng: np.random.Generator) -> np.ndarray:
        return self._stream.point(len(self.records))
