"""The ask/tell contract every sampler keeps, and the history they all share.

A sampler owns the record of its trials: asked (pending), told with a value (complete), or
told ``None`` (failed). Algorithms only implement ``_suggest``; they see the history as
arrays in the unit cube, with losses already turned to "lower is better".

Determinism: each ask draws from a generator seeded by ``(seed, number of asks so far)``,
and every algorithm's state is a function of the history, so replaying the same asks and
tells reproduces the same suggestions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import attrs
import numpy as np

from parasearch.samplers._transform import UnitTransform
from parasearch.space import Space

PENDING, COMPLETE, FAILED = "pending", "complete", "failed"


class SamplerError(RuntimeError):
    """A sampler cannot do what was asked (unknown trial, unsupported space...)."""


class SearchExhausted(SamplerError):
    """A finite sampler (e.g. grid) has proposed every point it has."""


@attrs.frozen
class Trial:
    """One suggestion: ``id`` to tell its result under, ``params`` to evaluate."""

    id: int
    params: dict[str, Any]


@attrs.define
class Record:
    """What the sampler remembers of one trial."""

    id: int
    params: dict[str, Any]
    x: np.ndarray
    state: str = PENDING
    value: float | None = None
    loss: float | None = None


class Sampler(ABC):
    """Base of all samplers: keeps the history and the ask/tell bookkeeping."""

    name: ClassVar[str] = "base"
    supports_categorical: ClassVar[bool] = True

    def __init__(self, space: Space, seed: int = 0, maximize: bool = False) -> None:
        self.space = space
        self.seed = int(seed)
        self.maximize = bool(maximize)
        self.transform = UnitTransform(space)
        self.records: list[Record] = []
        self._by_id: dict[int, Record] = {}
        # Column store of the history, grown by doubling, so algorithms slice it cheaply.
        self._xs = np.empty((16, self.transform.ndim))
        self._states = np.empty(16, dtype="<U8")
        self._losses = np.full(16, np.nan)
        if not self.supports_categorical and self.transform.is_categorical.any():
            names = [d.name for d in self.transform.dims if hasattr(d, "choices")]
            raise SamplerError(
                f"sampler {self.name!r} handles numeric dimensions only; categorical: "
                f"{', '.join(names)} (use 'tpe', 'gp' or 'random' for mixed spaces)"
            )

    # -- public API ---------------------------------------------------------------------

    def ask(self) -> Trial:
        """Suggest the next parameters; any number of asks may be pending at once."""
        trial_id = len(self.records)
        rng = np.random.default_rng([self.seed, trial_id])
        x = np.asarray(self._suggest(rng), float)
        return self._add(trial_id, self.transform.decode(x))

    def adopt(self, params: dict[str, Any]) -> Trial:
        """Take in a trial decided before (a search's recorded history, replayed on resume):
        it becomes pending, as if asked, so replaying the asks and tells of a search in order
        puts the sampler back in the state it had, and its next ask is the same."""
        if not self.space.contains(params):
            raise SamplerError(f"recorded parameters {params!r} are not in the space "
                               f"({', '.join(self.space.names)})")
        return self._add(len(self.records), dict(params))

    def _add(self, trial_id: int, params: dict[str, Any]) -> Trial:
        record = Record(trial_id, params, self.transform.encode(params))
        self.records.append(record)
        self._by_id[trial_id] = record
        if trial_id >= len(self._states):
            self._xs = np.vstack([self._xs, np.empty_like(self._xs)])
            self._states = np.concatenate([self._states, np.empty_like(self._states)])
            self._losses = np.concatenate([self._losses, np.full(len(self._losses), np.nan)])
        self._xs[trial_id] = record.x
        self._states[trial_id] = PENDING
        return Trial(trial_id, dict(params))

    def tell(self, trial_id: int, value: float | None) -> None:
        """Report a trial's objective value, or ``None`` (or NaN) when it failed."""
        record = self._by_id.get(trial_id)
        if record is None:
            raise SamplerError(f"unknown trial id {trial_id!r}")
        if record.state != PENDING:
            raise SamplerError(f"trial {trial_id} was already told ({record.state})")
        if value is None or not math.isfinite(float(value)):
            record.state = FAILED
        else:
            record.state = COMPLETE
            record.value = float(value)
            record.loss = -float(value) if self.maximize else float(value)
            self._losses[trial_id] = record.loss
        self._states[trial_id] = record.state
        self._on_tell(record)

    @property
    def best(self) -> Record | None:
        """The completed trial with the best value so far."""
        done = [r for r in self.records if r.state == COMPLETE]
        return min(done, key=lambda r: r.loss) if done else None

    # -- for algorithms -----------------------------------------------------------------

    @abstractmethod
    def _suggest(self, rng: np.random.Generator) -> np.ndarray:
        """Coordinates of the next point (see ``UnitTransform``)."""

    def _on_tell(self, record: Record) -> None:  # noqa: B027 - optional hook
        """Hook for algorithms that update state as results arrive."""

    def _arrays(self, state: str) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates and losses of the trials in ``state`` (losses NaN unless complete)."""
        chosen = np.flatnonzero(self._states[: len(self.records)] == state)
        return self._xs[chosen], self._losses[chosen]

    def _uniform(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws from the prior, in coordinates."""
        t = self.transform
        x = rng.random((n, t.ndim))
        for j, dim in enumerate(t.dims):
            if t.is_categorical[j]:
                x[:, j] = rng.choice(len(dim.choices), size=n, p=np.asarray(dim.probs))
        return x
