"""Test functions with known optima, as in the reference figures (search-benchmarks.md)."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import numpy as np

_B, _C, _T = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)

_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def branin(params: dict) -> float:
    x1, x2 = params["x1"], params["x2"]
    return (x2 - _B * x1**2 + _C * x1 - 6) ** 2 + 10 * (1 - _T) * math.cos(x1) + 10


def hartmann6(params: dict) -> float:
    x = np.array([params[f"x{i}"] for i in range(1, 7)])
    return float(-np.sum(_ALPHA * np.exp(-np.sum(_A * (x - _P) ** 2, axis=1))))


@attrs.frozen
class Function:
    """A benchmark: its search space as priors, its optimum, and the regret it targets."""

    name: str
    priors: tuple[str, ...]
    evaluate: Callable[[dict], float]
    optimum: float
    targets: tuple[float, ...]


FUNCTIONS = {
    "branin": Function(
        "branin", ("x1~uniform(-5, 10)", "x2~uniform(0, 15)"), branin, 0.397887, (0.1, 1e-3)
    ),
    "hartmann6": Function(
        "hartmann6",
        tuple(f"x{i}~uniform(0, 1)" for i in range(1, 7)),
        hartmann6,
        -3.32237,
        (0.3, 0.05),
    ),
}
