"""Tree-structured Parzen Estimator (multivariate), for mixed spaces and asynchronous workers.

TPE splits the trials into the best few (``below``) and the rest (``above``), fits one
kernel density to each, and proposes the candidate drawn from ``below`` that maximises
``l(x) / g(x)``. Joint (multivariate) kernels let it follow correlated valleys.

Each kernel is as wide as the distance to its nearest neighbours in its group, so kernels are
narrow where good points cluster and wide where they are isolated: TPE refines an optimum
quickly without losing the other basins.

Pending trials count as bad ones (``above``, at half the weight of a real result: a softened
constant liar), which keeps asynchronous workers from piling onto the same spot without
blotting out the region they explore; failed trials count as bad too, which steers away from
regions that crash.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import ndtr, ndtri

from parasearch.samplers.base import COMPLETE, FAILED, PENDING, Sampler
from parasearch.samplers.qmc import SobolStream
from parasearch.space import Space

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class TPESampler(Sampler):
    """Multivariate TPE with a constant liar.

    ``n_startup`` quasi-random trials come first. ``n_candidates`` draws from ``l`` are
    scored per ask; more candidates exploit ``l/g`` harder.
    """

    name = "tpe"

    def __init__(
        self,
        space: Space,
        seed: int = 0,
        maximize: bool = False,
        n_startup: int = 10,
        n_candidates: int = 24,
        gamma: float = 0.1,
        max_below: int = 25,
        bandwidth: float = 0.7,
        floor: float = 0.5,
        k_neighbours: int = 2,
        constant_liar: bool = True,
        liar_weight: float = 0.5,
    ) -> None:
        super().__init__(space, seed, maximize)
        self.n_startup = n_startup
        self.n_candidates = n_candidates
        self.gamma = gamma
        self.max_below = max_below
        self.bandwidth = bandwidth
        self.floor = floor
        self.k_neighbours = k_neighbours
        self.constant_liar = constant_liar
        self.liar_weight = liar_weight
        self._stream = SobolStream(self.transform, self.seed)

    def _suggest(self, rng: np.random.Generator) -> np.ndarray:
        x_done, losses = self._arrays(COMPLETE)
        if len(x_done) < self.n_startup:
            return self._stream.point(len(self.records))
        order = np.argsort(losses, kind="stable")
        n_below = min(max(1, math.ceil(self.gamma * len(x_done))), self.max_below)
        below = x_done[order[:n_below]]
        bad = [x_done[order[n_below:]], self._arrays(FAILED)[0]]
        weights = [np.ones(len(b)) for b in bad]
        if self.constant_liar:
            bad.append(self._arrays(PENDING)[0])
            weights.append(np.full(len(bad[-1]), self.liar_weight))
        low = _Parzen(self, below, np.ones(len(below)))
        high = _Parzen(self, np.vstack(bad), np.concatenate(weights))
        candidates = low.sample(rng, self.n_candidates)
        candidates = self.transform.snap(candidates)
        score = low.log_pdf(candidates) - high.log_pdf(candidates)
        return candidates[int(np.argmax(score))]


class _Parzen:
    """A mixture of the prior and one joint kernel per observation, in the unit cube."""

    def __init__(self, sampler: TPESampler, points: np.ndarray, weights: np.ndarray) -> None:
        t = sampler.transform
        self.t = t
        self.points = points
        m, d = points.shape
        self.num = np.flatnonzero(t.numeric)
        self.cat = np.flatnonzero(t.is_categorical)
        # One mixture weight per observation, plus the prior's.
        w = np.append(weights, 1.0)
        self.log_w = np.log(w / w.sum())
        self.sigma = _bandwidths(points[:, self.num], t.n_levels[self.num], sampler)
        self.mu = points[:, self.num]
        lo = ndtr((0.0 - self.mu) / self.sigma)
        hi = ndtr((1.0 - self.mu) / self.sigma)
        self.lo, self.mass = lo, np.maximum(hi - lo, 1e-300)
        self.log_norm = np.log(self.mass) + np.log(self.sigma) + _LOG_SQRT_2PI
        # Categorical kernels: keep the observed choice with probability 1 - eps.
        self.cat_eps = []
        for j in self.cat:
            k = t.n_choices[j]
            self.cat_eps.append((k - 1) / k / math.sqrt(m + 1))
        self.cat_prior = [np.log(np.asarray(t.dims[j].probs)) for j in self.cat]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        m = len(self.points)
        comp = rng.choice(m + 1, size=n, p=np.exp(self.log_w))
        out = np.empty((n, self.t.ndim))
        from_prior = comp == m
        obs = np.where(from_prior, 0, comp)
        # Numeric: inverse-CDF draws from the truncated kernels; the prior is uniform.
        u = rng.random((n, len(self.num)))
        if len(self.num) and m:
            z = ndtri(np.clip(self.lo[obs] + u * self.mass[obs], 1e-300, 1 - 1e-16))
            kern = np.clip(self.mu[obs] + self.sigma[obs] * z, 0.0, 1.0)
        else:
            kern = u
        out[:, self.num] = np.where(from_prior[:, None], rng.random(u.shape), kern)
        for i, j in enumerate(self.cat):
            k = self.t.n_choices[j]
            probs = np.exp(self.cat_prior[i])
            prior_draw = rng.choice(k, size=n, p=probs)
            other = (self.points[obs, j].astype(int) + rng.integers(1, max(k, 2), size=n)) % k
            keep = rng.random(n) >= self.cat_eps[i]
            kern_draw = np.where(keep, self.points[obs, j], other) if m else prior_draw
            out[:, j] = np.where(from_prior, prior_draw, kern_draw)
        return out

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        m = len(self.points)
        # log density of each candidate under each component: (n, m + 1).
        parts = np.zeros((len(x), m + 1))
        if len(self.num) and m:
            z = (x[:, None, self.num] - self.mu[None]) / self.sigma[None]
            parts[:, :m] = np.sum(-0.5 * z * z - self.log_norm[None], axis=2)
        for i, j in enumerate(self.cat):
            k = self.t.n_choices[j]
            eps = self.cat_eps[i]
            same = x[:, None, j] == self.points[None, :, j]
            other = math.log(max(eps, 1e-12) / max(k - 1, 1))
            parts[:, :m] += np.where(same, math.log(1 - eps), other)
            parts[:, m] += self.cat_prior[i][x[:, j].astype(int)]
        parts += self.log_w[None]
        top = parts.max(axis=1, keepdims=True)
        return top[:, 0] + np.log(np.exp(parts - top).sum(axis=1))


def _bandwidths(mu: np.ndarray, levels: np.ndarray, sampler: TPESampler) -> np.ndarray:
    """Per-observation, per-dimension kernel widths, shaped like ``mu``.

    Each kernel is as wide as the distance to its nearest neighbours in the group: narrow
    where good points cluster (exploitation), wide where they are isolated (exploration).
    Widths are clipped below by a floor that shrinks as the group grows, and by half an
    integer step, and above by the whole range.
    """
    m, d = mu.shape
    floor = sampler.floor / min(100.0, 1.0 + m)
    steps = np.where(levels > 0, 0.5 / np.maximum(levels, 1), 0.0)
    if m < 2 or d == 0:
        return np.broadcast_to(np.maximum(floor, steps), (m, d)).copy()
    k = min(sampler.k_neighbours, m - 1)
    # Large groups (the ``above`` one late in a search) take approximate neighbours: fast,
    # and a kernel width does not need three digits.
    eps = 0.5 if m > 200 else 0.0
    kth = cKDTree(mu).query(mu, k=[k + 1], eps=eps)[0][:, 0]
    sigma = sampler.bandwidth * kth[:, None] / math.sqrt(d) * np.ones((1, d))
    return np.clip(np.maximum(sigma, steps), floor, 1.0)
