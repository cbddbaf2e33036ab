"""CMA-ES: an evolution strategy that learns a Gaussian search distribution, for numeric spaces.

The core update is the ``cmaes`` library's; this module adapts it to asynchronous ask/tell.
It runs in the unit cube (so log scales and normal priors are handled by the transform, and
the cube's faces are CMA's bounds); integers are searched as continuous and rounded.

Asynchrony: asks always draw from the current generation's distribution. Results of the
current generation fill its population; once ``popsize`` are in, the distribution is
updated. A result that arrives one generation late still joins the population (its
distribution was close), so pending workers are not wasted. The first ask of each generation
evaluates the distribution's mean itself, usually the best point CMA-ES knows of. Failed
trials rank last. When the search stalls it restarts with a doubled population (IPOP) from a
random point. Categorical dimensions are rejected: CMA-ES has no sound way to move on them.
"""

from __future__ import annotations

import numpy as np

from parasearch.samplers.base import COMPLETE, FAILED, Record, Sampler
from parasearch.samplers.qmc import SobolStream
from parasearch.space import Space


class CmaEsSampler(Sampler):
    """CMA-ES with IPOP restarts over the unit cube."""

    name = "cmaes"
    supports_categorical = False

    def __init__(
        self,
        space: Space,
        seed: int = 0,
        maximize: bool = False,
        sigma0: float = 0.2,
        popsize: int | None = None,
        restarts: bool = True,
        use_stale: bool = True,
        n_startup: int = 0,
        lr_adapt: bool = False,
        inject_mean: bool = True,
    ) -> None:
        from cmaes import CMA

        super().__init__(space, seed, maximize)
        self._cma_cls = CMA
        self.sigma0 = sigma0
        self.restarts = restarts
        self.use_stale = use_stale
        self.n_startup = n_startup
        self.lr_adapt = lr_adapt
        self.inject_mean = inject_mean
        self._asked_in: dict[int, int] = {}
        self._popsize0 = popsize
        self._stream = SobolStream(self.transform, self.seed)
        # The library needs two coordinates at least; a 1-D space gets an ignored second one.
        self._width = max(self.transform.ndim, 2)
        # Start at the centre of the priors, or at the default values where given.
        mean = np.full(self._width, 0.5)
        ndim = self.transform.ndim
        if space.defaults():
            centre = self.transform.decode(mean[:ndim])
            mean[:ndim] = self.transform.encode({**centre, **space.defaults()})
        self._mean0 = mean
        self._cma = None
        if n_startup <= 0:
            self._new_optimizer(mean, popsize)
        self._generation_of: dict[int, int] = {}
        self._raw: dict[int, np.ndarray] = {}
        self._current: list[tuple[np.ndarray, float | None]] = []

    def _new_optimizer(self, mean: np.ndarray, popsize: int | None) -> None:
        bounds = np.tile([0.0, 1.0], (self._width, 1))
        self._cma = self._cma_cls(
            mean=mean,
            sigma=self.sigma0,
            bounds=bounds,
            seed=self.seed,
            population_size=popsize,
            lr_adapt=self.lr_adapt,
        )
        self._serial = getattr(self, "_serial", 0) + 1

    @property
    def popsize(self) -> int:
        return self._cma.population_size

    def _suggest(self, rng: np.random.Generator) -> np.ndarray:
        if self._cma is None:
            x_done, losses = self._arrays(COMPLETE)
            if len(x_done) < self.n_startup:
                return self._stream.point(len(self.records))
            # Start from the best point of a quasi-random design.
            mean = self._mean0.copy()
            if len(x_done):
                mean[: self.transform.ndim] = x_done[int(np.argmin(losses))]
            self._new_optimizer(np.clip(mean, 0.0, 1.0), self._popsize0)
        self._cma.reseed_rng(int(rng.integers(2**31)))
        key = self._key()
        if self.inject_mean and key not in self._asked_in:
            # The mean is usually better than any sample around it: evaluate it once per
            # generation. Its step from the mean is zero, so the update stays unbiased.
            raw = np.clip(self._cma.mean, 0.0, 1.0)
        else:
            raw = self._cma.ask()
        self._asked_in[key] = self._asked_in.get(key, 0) + 1
        trial_id = len(self.records)
        self._generation_of[trial_id] = key
        self._raw[trial_id] = raw
        return raw[: self.transform.ndim]

    def _key(self) -> int:
        # Distinguishes generations across restarts.
        return self._serial * 1_000_000 + self._cma.generation

    def _on_tell(self, record: Record) -> None:
        if record.id not in self._raw:
            return  # a quasi-random startup trial
        raw = self._raw.pop(record.id)
        loss = record.loss if record.state == COMPLETE else None
        age = self._key() - self._generation_of.pop(record.id)
        # A result from the generation just before (same restart) is a sample of a nearby
        # distribution: used to fill this population rather than thrown away.
        if age == 0 or (self.use_stale and age == 1 and record.state != FAILED):
            self._current.append((raw, loss))
        if len(self._current) >= self.popsize:
            self._update()

    def _update(self) -> None:
        batch = self._current[: self.popsize]
        self._current = []
        finite = [loss for _, loss in batch if loss is not None]
        worst = max(finite) if finite else 0.0
        penalty = worst + 1.0 + abs(worst)
        self._cma.tell([(x, penalty if loss is None else loss) for x, loss in batch])
        if self.restarts and self._cma.should_stop():
            rng = np.random.default_rng([self.seed, len(self.records), 7])
            self._new_optimizer(rng.random(self._width), self.popsize * 2)
