"""Map parameters to and from a unit cube, so that every algorithm works on one geometry.

Each searched dimension becomes one coordinate. A numeric dimension's coordinate is its prior
quantile in [0, 1]: uniform is linear, loguniform is linear in log, normal goes through its
CDF, and an integer owns an equal-width bin of [0, 1] (so a uniform coordinate gives every
integer the same chance). A categorical coordinate is the index of the choice. Fidelity
dimensions are not searched: decoding sets them to their full budget.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from parasearch.space import Categorical, Fidelity, Integer, Normal, Real, Space

# Normal priors are unbounded; keep their quantile away from 0 and 1 so decoding stays finite.
_NORMAL_EPS = 1e-9


class UnitTransform:
    """Encode ``params`` dicts as vectors and decode vectors back to valid ``params``."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.dims = [d for d in space if not isinstance(d, Fidelity)]
        self.fixed = {d.name: d.high for d in space if isinstance(d, Fidelity)}
        self.is_categorical = np.array([isinstance(d, Categorical) for d in self.dims], bool)
        self.n_choices = np.array(
            [len(d.choices) if isinstance(d, Categorical) else 0 for d in self.dims], int
        )
        # Number of distinct values of each integer-valued coordinate (0 for continuous).
        self.n_levels = np.array([_levels(d) for d in self.dims], int)

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def numeric(self) -> np.ndarray:
        return ~self.is_categorical

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        """The coordinates of ``params`` (numeric in [0, 1], categorical as an index)."""
        return np.array([_encode(d, params[d.name]) for d in self.dims], float)

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        """Valid params for coordinates ``x``; out-of-range coordinates are clipped."""
        params = {d.name: _decode(d, float(v)) for d, v in zip(self.dims, x, strict=True)}
        params.update(self.fixed)
        return {d.name: params[d.name] for d in self.space}

    def snap(self, x: np.ndarray) -> np.ndarray:
        """The coordinates that ``decode`` would actually give, e.g. integer bin centres.

        Takes one point or a batch (rows); vectorised, since samplers snap many candidates.
        """
        x = np.asarray(x, float)
        out = np.array(x, float, ndmin=2, copy=True)
        for j, dim in enumerate(self.dims):
            col = out[:, j]
            if isinstance(dim, Categorical):
                out[:, j] = np.clip(np.round(col), 0, len(dim.choices) - 1)
            elif isinstance(dim, Integer):
                values = _decode_ints(dim, np.clip(col, 0.0, 1.0))
                out[:, j] = (
                    [_encode(dim, int(v)) for v in values]
                    if dim.log
                    else ((values - dim.low + 0.5) / (dim.high - dim.low + 1))
                )
            elif isinstance(dim, Normal):
                out[:, j] = np.clip(col, _NORMAL_EPS, 1 - _NORMAL_EPS)
                if dim.discrete:
                    out[:, j] = [_encode(dim, _decode(dim, u)) for u in out[:, j]]
            else:
                out[:, j] = np.clip(col, 0.0, 1.0)
        return out.reshape(x.shape)


def _levels(dim: Any) -> int:
    if isinstance(dim, Integer):
        return dim.high - dim.low + 1
    if isinstance(dim, Categorical):
        return len(dim.choices)
    return 0


def _log_edges(dim: Integer) -> tuple[float, float]:
    return math.log(dim.low - 0.5 if dim.low > 0.5 else dim.low / 2), math.log(dim.high + 0.5)


def _decode_ints(dim: Integer, u: np.ndarray) -> np.ndarray:
    if dim.log:
        lo, hi = _log_edges(dim)
        values = np.round(np.exp(lo + u * (hi - lo)))
    else:
        values = dim.low + np.floor(u * (dim.high - dim.low + 1))
    return np.clip(values, dim.low, dim.high)


def _encode(dim: Any, value: Any) -> float:
    if isinstance(dim, Categorical):
        return float(dim.index(value))
    if isinstance(dim, Real):
        if dim.log:
            lo, hi = math.log(dim.low), math.log(dim.high)
            return (math.log(value) - lo) / (hi - lo)
        return (value - dim.low) / (dim.high - dim.low)
    if isinstance(dim, Integer):
        if dim.log:
            lo, hi = _log_edges(dim)
            # Centre of the bin in log space, between the bin's edges.
            left = math.log(max(value - 0.5, math.exp(lo)))
            right = math.log(value + 0.5)
            return ((left + right) / 2 - lo) / (hi - lo)
        return (value - dim.low + 0.5) / (dim.high - dim.low + 1)
    if isinstance(dim, Normal):
        from scipy.special import ndtr  # only normal priors need it (scipy: ~0.5 s to import)

        return float(np.clip(ndtr((value - dim.mu) / dim.sigma), _NORMAL_EPS, 1 - _NORMAL_EPS))
    raise TypeError(f"cannot encode {dim!r}")


def _decode(dim: Any, u: float) -> Any:
    if isinstance(dim, Categorical):
        return dim.choices[int(np.clip(round(u), 0, len(dim.choices) - 1))]
    u = min(max(u, 0.0), 1.0)
    if isinstance(dim, Real):
        if dim.log:
            lo, hi = math.log(dim.low), math.log(dim.high)
            return min(max(math.exp(lo + u * (hi - lo)), dim.low), dim.high)
        return min(max(dim.low + u * (dim.high - dim.low), dim.low), dim.high)
    if isinstance(dim, Integer):
        if dim.log:
            lo, hi = _log_edges(dim)
            value = round(math.exp(lo + u * (hi - lo)))
        else:
            value = dim.low + math.floor(u * (dim.high - dim.low + 1))
        return int(min(max(value, dim.low), dim.high))
    if isinstance(dim, Normal):
        from scipy.special import ndtri

        u = min(max(u, _NORMAL_EPS), 1 - _NORMAL_EPS)
        value = dim.mu + dim.sigma * float(ndtri(u))
        return int(round(value)) if dim.discrete else value
    raise TypeError(f"cannot decode {dim!r}")
