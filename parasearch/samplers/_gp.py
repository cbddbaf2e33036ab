"""A Gaussian process for Bayesian optimisation: Matérn 5/2 kernel, fitted hyper-parameters.

Inputs are unit-cube coordinates. Numeric dimensions enter the kernel distance through
their scaled difference; categorical ones through a mismatch indicator (a Hamming distance
with its own length scale). Outputs are standardised. Hyper-parameters (one length scale per
dimension, signal and noise variances) maximise the marginal likelihood plus weak log-normal
priors, by L-BFGS-B with analytic gradients.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.optimize import minimize
from scipy.spatial.distance import cdist
from scipy.special import erfcx, log_ndtr

_SQRT5 = math.sqrt(5.0)
_JITTER = 1e-8
# Bounds and priors, in log space: length scales, signal variance, noise variance.
_LOG_LS = (math.log(5e-3), math.log(5.0))
_LOG_SF = (math.log(0.05), math.log(20.0))
_LOG_SN = (math.log(1e-6), math.log(1.0))
_PRIOR_LS = (math.log(0.5), 0.75)
_PRIOR_SF = (0.0, 1.5)
_PRIOR_SN = (math.log(1e-4), 3.0)


def _sq_diffs(a: np.ndarray, b: np.ndarray, is_cat: np.ndarray) -> np.ndarray:
    """Squared per-dimension distances, shaped (d, len(a), len(b)); mismatch for categories."""
    diff = a.T[:, :, None] - b.T[:, None, :]
    sq = diff * diff
    if is_cat.any():
        sq[is_cat] = (np.abs(diff[is_cat]) > 0.5).astype(float)
    return sq


def _matern(r: np.ndarray) -> np.ndarray:
    s = _SQRT5 * r
    return (1.0 + s + s * s / 3.0) * np.exp(-s)


def _matern_dr2(r: np.ndarray) -> np.ndarray:
    """d k / d (r²), finite at r = 0."""
    s = _SQRT5 * r
    return -(5.0 / 6.0) * (1.0 + s) * np.exp(-s)


class GaussianProcess:
    """Fit on ``(x, y)`` once, then ask for posterior means, variances and their gradients."""

    def __init__(self, is_cat: np.ndarray, theta: np.ndarray | None = None) -> None:
        self.is_cat = np.asarray(is_cat, bool)
        d = len(self.is_cat)
        default = np.concatenate([np.full(d, _PRIOR_LS[0]), [0.0, math.log(1e-3)]])
        self.theta = default if theta is None else np.asarray(theta, float).copy()
        self._default = default

    # -- fitting ------------------------------------------------------------------------

    def fit(
        self, x: np.ndarray, y: np.ndarray, maxiter: int = 80, from_default: bool = True
    ) -> None:
        """Standardise ``y``, fit hyper-parameters and factorise.

        The fit starts from the current hyper-parameters and, if ``from_default``, also from
        the prior's centre (keeping the better), which guards against a stale local optimum.
        """
        self.y_mean = float(np.mean(y))
        self.y_std = float(np.std(y)) or 1.0
        self.x = np.asarray(x, float)
        ys = (np.asarray(y, float) - self.y_mean) / self.y_std
        self.ys = ys
        if len(x) > 1:
            sq = _sq_diffs(self.x, self.x, self.is_cat)
            bounds = self._bounds()
            best = None
            starts = (self.theta, self._default) if from_default else (self.theta,)
            for start in starts:
                res = minimize(
                    self._neg_log_posterior,
                    np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds]),
                    args=(sq, ys),
                    jac=True,
                    method="L-BFGS-B",
                    bounds=bounds,
                    options={"maxiter": maxiter},
                )
                if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                    best = res
                if start is self._default:
                    break
            if best is not None:
                self.theta = best.x
        self._factorise(ys)

    def condition(self, x_extra: np.ndarray, y_extra_std: np.ndarray) -> None:
        """Add observations (standardised values) without refitting, e.g. pending fantasies."""
        self.x = np.vstack([self.x, x_extra])
        self.ys = np.concatenate([self.ys, y_extra_std])
        self._factorise(self.ys)

    def _bounds(self) -> list[tuple[float, float]]:
        return [_LOG_LS] * len(self.is_cat) + [_LOG_SF, _LOG_SN]

    def _neg_log_posterior(self, theta: np.ndarray, sq: np.ndarray, ys: np.ndarray):
        d = len(self.is_cat)
        ls2 = np.exp(2 * theta[:d])
        sf, sn = math.exp(theta[d]), math.exp(theta[d + 1])
        r2 = np.tensordot(1.0 / ls2, sq, axes=1)
        r = np.sqrt(r2)
        kf = sf * _matern(r)
        k = kf + (sn + _JITTER) * np.eye(len(ys))
        try:
            chol = cho_factor(k, lower=True)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros_like(theta)
        alpha = cho_solve(chol, ys)
        log_det = 2.0 * np.sum(np.log(np.diag(chol[0])))
        nll = 0.5 * ys @ alpha + 0.5 * log_det + 0.5 * len(ys) * math.log(2 * math.pi)
        k_inv = cho_solve(chol, np.eye(len(ys)))
        w = np.outer(alpha, alpha) - k_inv
        grad = np.empty_like(theta)
        # dK/d log l_j = sf * dk/d(r²) * (-2 sq_j / l_j²)
        m = w * (sf * _matern_dr2(r))
        grad[:d] = -0.5 * np.tensordot(sq, m, axes=([1, 2], [0, 1])) * (-2.0 / ls2)
        grad[d] = -0.5 * np.sum(w * kf)
        grad[d + 1] = -0.5 * sn * np.trace(w)
        prior, prior_grad = _log_prior(theta, d)
        return nll - prior, grad - prior_grad

    def _factorise(self, ys: np.ndarray) -> None:
        d = len(self.is_cat)
        self.ls2 = np.exp(2 * self.theta[:d])
        self.sf = math.exp(self.theta[d])
        self.sn = math.exp(self.theta[d + 1])
        k = self.sf * _matern(np.sqrt(self._r2(self.x, self.x)))
        k[np.diag_indices_from(k)] += self.sn + _JITTER
        self.chol = cho_factor(k, lower=True)
        self.alpha = cho_solve(self.chol, ys)

    def _r2(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        num = ~self.is_cat
        scale = 1.0 / np.sqrt(self.ls2[num])
        r2 = cdist(a[:, num] * scale, b[:, num] * scale, "sqeuclidean")
        for j in np.flatnonzero(self.is_cat):
            r2 += (np.abs(a[:, j, None] - b[None, :, j]) > 0.5) / self.ls2[j]
        return r2

    # -- prediction ---------------------------------------------------------------------

    def predict(self, xq: np.ndarray, grad: bool = False):
        """Posterior mean and variance (standardised units) at ``xq``, optionally gradients."""
        r2 = self._r2(xq, self.x)
        kq = self.sf * _matern(np.sqrt(r2))
        mean = kq @ self.alpha
        v = solve_triangular(self.chol[0], kq.T, lower=True)
        var = np.maximum(self.sf - np.sum(v * v, axis=0), 1e-12)
        if not grad:
            return mean, var
        # dk/dx = sf * dk/d(r²) * 2 (x - x_i) / l²; categorical coordinates get no gradient.
        diff = xq[:, None, :] - self.x[None, :, :]
        dk = (self.sf * _matern_dr2(np.sqrt(r2)))[:, :, None] * (2.0 * diff / self.ls2)
        dk[:, :, self.is_cat] = 0.0
        dmean = np.einsum("mnd,n->md", dk, self.alpha)
        kinv_k = cho_solve(self.chol, kq.T)
        dvar = -2.0 * np.einsum("mnd,nm->md", dk, kinv_k)
        return mean, var, dmean, dvar


def _log_prior(theta: np.ndarray, d: int) -> tuple[float, np.ndarray]:
    centres = np.concatenate([np.full(d, _PRIOR_LS[0]), [_PRIOR_SF[0], _PRIOR_SN[0]]])
    widths = np.concatenate([np.full(d, _PRIOR_LS[1]), [_PRIOR_SF[1], _PRIOR_SN[1]]])
    z = (theta - centres) / widths
    return float(-0.5 * np.sum(z * z)), -z / widths


def log_h(z: np.ndarray) -> np.ndarray:
    """log(φ(z) + z Φ(z)), accurate far into the negative tail (log-EI's core)."""
    z = np.asarray(z, float)
    out = np.empty_like(z)
    hi = z > -1.0
    zh = z[hi]
    out[hi] = np.log(np.exp(-0.5 * zh * zh) / math.sqrt(2 * math.pi) + zh * np.exp(log_ndtr(zh)))
    zl = z[~hi]
    # φ(z) (1 + z √(π/2) erfcx(-z/√2)): the bracket stays positive and accurate for z < -1.
    bracket = 1.0 + zl * math.sqrt(math.pi / 2) * erfcx(-zl / math.sqrt(2))
    out[~hi] = -0.5 * zl * zl - 0.5 * math.log(2 * math.pi) + np.log(np.maximum(bracket, 1e-300))
    return out


def log_ei(best: float, mean: np.ndarray, var: np.ndarray, dmean=None, dvar=None):
    """log expected improvement below ``best`` (minimisation), and its gradient if asked."""
    sigma = np.sqrt(var)
    z = (best - mean) / sigma
    lh = log_h(z)
    value = np.log(sigma) + lh
    if dmean is None:
        return value
    # d log h / dz = Φ(z) / h(z); dσ = dvar / (2σ); dz = -(dmean + z dσ) / σ.
    ratio = np.exp(log_ndtr(z) - lh)
    dsigma = dvar / (2.0 * sigma[:, None])
    dz = -(dmean + z[:, None] * dsigma) / sigma[:, None]
    return value, dsigma / sigma[:, None] + ratio[:, None] * dz
