"""Gaussian-process Bayesian optimisation: few evaluations, each chosen with care.

After a quasi-random start, each ask fits a GP (``_gp``) to the completed trials and
proposes the point of highest log expected improvement, found by scoring many candidates
and polishing the best few together with L-BFGS-B. Meant for budgets up to a few hundred.

Pending trials are "believed": the GP is conditioned on its own mean there (no refit), which
shrinks the uncertainty, so asynchronous workers are sent elsewhere. Failed trials count as
the worst value seen, which steers away from regions that crash.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from parasearch.samplers._gp import GaussianProcess, log_ei
from parasearch.samplers.base import COMPLETE, FAILED, PENDING, Sampler
from parasearch.samplers.qmc import SobolStream
from parasearch.space import Space


class GPSampler(Sampler):
    """GP-BO with a Matérn 5/2 kernel and a log-EI acquisition."""

    name = "gp"

    def __init__(
        self,
        space: Space,
        seed: int = 0,
        maximize: bool = False,
        n_startup: int = 10,
        n_candidates: int = 2048,
        n_polish: int = 8,
        xi: float = 0.0,
    ) -> None:
        super().__init__(space, seed, maximize)
        self.n_startup = n_startup
        self.n_candidates = n_candidates
        self.n_polish = n_polish
        self.xi = xi
        self._stream = SobolStream(self.transform, self.seed)
        self._theta: np.ndarray | None = None

    def _suggest(self, rng: np.random.Generator) -> np.ndarray:
        x_done, losses = self._arrays(COMPLETE)
        if len(x_done) < self.n_startup:
            return self._stream.point(len(self.records))
        x_failed, _ = self._arrays(FAILED)
        x = np.vstack([x_done, x_failed])
        y = np.concatenate([losses, np.full(len(x_failed), losses.max())])
        gp = GaussianProcess(self.transform.is_categorical, self._theta)
        # Warm-started fits are cheap; a fresh start from the prior now and then (and always
        # while data are few) keeps the fit from sticking to an early optimum.
        gp.fit(x, y, from_default=self._theta is None or len(x) < 100 or len(x) % 10 == 0)
        self._theta = gp.theta
        # ``xi`` (in standard deviations of the values, 0 by default) asks for a minimum
        # improvement; a positive value trades final precision for exploration.
        best = float(np.min(gp.ys[: len(x_done)])) - self.xi
        x_pending, _ = self._arrays(PENDING)
        if len(x_pending):
            gp.condition(x_pending, gp.predict(x_pending)[0])
        return self._maximise(gp, best, rng, x_done[np.argsort(losses)[:5]])

    def _maximise(self, gp: GaussianProcess, best: float, rng, incumbents) -> np.ndarray:
        t = self.transform
        # Candidates: draws from the priors, and small steps around the best points so far.
        wide = self._uniform(rng, self.n_candidates)
        near = np.repeat(incumbents, 64, axis=0)
        near[:, t.numeric] += rng.normal(0.0, 0.05, (len(near), int(t.numeric.sum())))
        near = np.clip(near, 0.0, 1.0)
        cands = np.vstack([wide, near])
        scores = log_ei(best, *gp.predict(cands))
        starts = cands[np.argsort(-scores)[: self.n_polish]]
        if t.numeric.any():
            starts = self._polish(gp, best, starts)
        starts = self._sweep_categories(gp, best, starts)
        final = np.array([t.snap(s) for s in starts])
        return final[int(np.argmax(log_ei(best, *gp.predict(final))))]

    def _polish(self, gp: GaussianProcess, best: float, starts: np.ndarray) -> np.ndarray:
        """L-BFGS-B on all starts at once: the objective is separable, the sum is their sum."""
        num = self.transform.numeric
        k, dn = len(starts), int(num.sum())
        fixed = starts.copy()

        def objective(flat: np.ndarray):
            pts = fixed.copy()
            pts[:, num] = flat.reshape(k, dn)
            value, grad = log_ei(best, *gp.predict(pts, grad=True))
            return -float(np.sum(value)), -grad[:, num].ravel()

        res = minimize(
            objective,
            starts[:, num].ravel(),
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, 1.0)] * (k * dn),
            options={"maxiter": 200},
        )
        out = fixed.copy()
        out[:, num] = np.clip(res.x.reshape(k, dn), 0.0, 1.0)
        return out

    def _sweep_categories(self, gp: GaussianProcess, best: float, pts: np.ndarray) -> np.ndarray:
        """Try every other choice of each categorical coordinate, keeping improvements."""
        t = self.transform
        pts = pts.copy()
        for j in np.flatnonzero(t.is_categorical):
            k = t.n_choices[j]
            trial = np.repeat(pts, k, axis=0)
            trial[:, j] = np.tile(np.arange(k), len(pts))
            scores = log_ei(best, *gp.predict(trial)).reshape(len(pts), k)
            pts[:, j] = np.argmax(scores, axis=1)
        return pts
