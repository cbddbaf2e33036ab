"""Grid search: every combination of a few values per dimension, in a shuffled order."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from parasearch.samplers._transform import _decode, _encode
from parasearch.samplers.base import Sampler, SearchExhausted
from parasearch.space import Categorical, Integer, Space


class GridSampler(Sampler):
    """Visits the grid's points once each, then raises ``SearchExhausted``.

    ``resolution`` is the number of values per numeric dimension (an int for all, or a
    mapping name -> int). Values sit at the centres of equal-probability cells of the prior
    (so a log scale gives a geometric grid); an integer dimension with fewer values than the
    resolution contributes all of them, and a categorical one all its choices. The visiting
    order is a seeded pseudo-random permutation, so stopping early still covers the space.
    """

    name = "grid"

    def __init__(
        self,
        space: Space,
        seed: int = 0,
        maximize: bool = False,
        resolution: int | Mapping[str, int] = 10,
    ) -> None:
        super().__init__(space, seed, maximize)
        self.axes = [self._axis(dim, resolution) for dim in self.transform.dims]
        self.size = math.prod(len(axis) for axis in self.axes)
        rng = np.random.default_rng(self.seed)
        # An affine map i -> (a*i + b) mod size is a permutation when gcd(a, size) == 1.
        self._step = 1
        if self.size > 2:
            while True:
                a = int(rng.integers(1, self.size))
                if math.gcd(a, self.size) == 1:
                    self._step = a
                    break
        self._offset = int(rng.integers(0, self.size))

    @staticmethod
    def _axis(dim, resolution: int | Mapping[str, int]) -> np.ndarray:
        if isinstance(dim, Categorical):
            return np.arange(len(dim.choices), dtype=float)
        n = resolution.get(dim.name, 10) if isinstance(resolution, Mapping) else resolution
        if int(n) < 1:
            raise ValueError(f"grid resolution for {dim.name!r} must be at least 1, got {n}")
        n = int(n)
        if isinstance(dim, Integer) and not dim.log and dim.high - dim.low + 1 <= n:
            count = dim.high - dim.low + 1
            return (np.arange(count) + 0.5) / count
        axis = (np.arange(n) + 0.5) / n
        if isinstance(dim, Integer):
            # Several cells may round to the same integer on a log scale: keep each once.
            axis = np.unique([_encode(dim, _decode(dim, u)) for u in axis])
        return axis

    @property
    def exhausted(self) -> bool:
        return len(self.records) >= self.size

    def _suggest(self, rng: np.random.Generator) -> np.ndarray:
        i = len(self.records)
        if i >= self.size:
            raise SearchExhausted(f"grid exhausted: all {self.size} points were asked")
        index = (self._step * i + self._offset) % self.size
        x = np.empty(len(self.axes))
        for j in range(len(self.axes) - 1, -1, -1):
            index, k = divmod(index, len(self.axes[j]))
            x[j] = self.axes[j][k]
        return x
