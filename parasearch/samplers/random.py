"""Random search: independent draws from the priors. The baseline every sampler must beat."""

from __future__ import annotations

import numpy as np

from parasearch.samplers.base import Sampler


class RandomSampler(Sampler):
    """Each ask is a fresh draw from the prior of every dimension."""

    name = "random"

    def _suggest(self, rng: np.random.Generator) -> np.ndarray:
        return self._uniform(rng, 1)[0]
