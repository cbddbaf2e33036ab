"""Asynchronous successive halving (ASHA) and asynchronous Hyperband: multi-fidelity samplers.

The space has one `fidelity(low, high, base)` dimension: the budget (epochs, data size) the
script is given. Rungs are budgets low, low·η, low·η², … up to high (η = base). When asked,
ASHA promotes a configuration if one is in the top 1/η of the results of its rung and has not
been promoted yet — re-run with the same parameters at the next rung's budget — otherwise it
starts a new configuration at the bottom rung. It never waits for a rung to fill (Li et
al., "A System for Massively Parallel Hyperparameter Tuning", 2020). Hyperband runs brackets of
ASHA that start at successively higher rungs, new configurations shared out so that each
bracket spends about the same budget, hedging against low fidelities that rank configurations
badly.

A rung is one budget, and its ranking is over every configuration evaluated at that budget,
whichever bracket it started in. Asynchronous promotions are decided on the results so far, so
small rungs promote by luck: Hyperband's brackets, ranked apart, would each hold a few dozen
configurations (12 and 6 per round for the brackets starting at 3 and 9 epochs with η = 3 and
27 epochs), and ranking them together lowered the median regret of the bench
(bench/parasearch_fidelity.py, 100 seeds) from 0.92 to 0.74. The brackets still hedge: new
configurations start at every rung in Hyperband's shares, unscreened by the rungs below.

New configurations come from a model once there are results to fit (as BOHB does for
Hyperband: Falkner et al., 2018): TPE's density ratio (parasearch/samplers/tpe.py) fitted on
the highest rung with at least d + 2 results (d searched dimensions): the most faithful
ranking there is enough of. Good = the top 1/η of that rung, the fraction ASHA itself would
promote; bad = the rest, the failures there, and at half weight the new configurations still
running, so parallel asks spread out. A third of new configurations stay random draws from the
prior, so a model misled by a low rung cannot lock the search in. `model=False` is the paper's
ASHA (every new configuration random).

Measured (bench/parasearch_fidelity.py: median regret, budget worth 30 full evaluations;
without the model -> with it; Oríon 0.2.7's ASHA / Hyperband and random at full fidelity in
the same runs). Full fidelity 27 epochs, seeds 0-29: hyperband 0.875 -> 0.379, asha 0.706 ->
0.710 (Oríon 0.811 / 0.766, random 0.984); seeds 100-199: hyperband 0.852 -> 0.474, asha
0.684 -> 0.539 (Oríon 0.678 / 0.886, random 1.36). 81 epochs, seeds 0-29: hyperband 0.412 ->
0.243, asha 0.263 -> 0.308 (Oríon 0.318 / 0.460, random 0.984); seeds 100-199: hyperband
0.554 -> 0.309, asha 0.372 -> 0.272 (Oríon 0.381 / 0.665, random 1.32). The model was
designed on seeds 1000-1199, where its defaults (d + 2 points, γ = 1/η, a third random) were
at or near the best of the few values tried (γ = 0.15 was clearly worse: 0.76 against 0.60
for hyperband). Ask+tell after 1,000 trials (`--time-at 1000`): about 0.5 ms (4-5 ms when the
layout was rebuilt at each ask).

Everything is derived from the history (a configuration's bracket is the rung it first ran at;
it is promoted from rung k once it appears at rung k + 1; the model is fitted on the records),
so replaying a search restores it. The layout is kept as records arrive, so an ask costs the
promotion scan and the model fit, not a pass over the whole history.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from parasearch.samplers.base import COMPLETE, FAILED, PENDING, Record, Sampler, SamplerError, Trial
from parasearch.space import Fidelity, Space


class AshaSampler(Sampler):
    name = "asha"
    brackets_wanted = 1

    def __init__(self, space: Space, seed: int = 0, maximize: bool = False,
                 reduction: float | None = None, model: bool = True,
                 random_fraction: float = 1 / 3, min_points: int | None = None,
                 gamma: float | None = None, n_candidates: int = 24) -> None:
        super().__init__(space, seed, maximize)
        fidelities = [d for d in space if isinstance(d, Fidelity)]
        if len(fidelities) != 1:
            raise SamplerError(f"{self.name} needs exactly one fidelity(low, high, base) "
                               f"dimension, got {len(fidelities)}")
        self.fidelity = fidelities[0]
        self.eta = float(reduction or self.fidelity.base)
        if self.eta <= 1:
            raise SamplerError(f"{self.name}: the reduction factor must exceed 1")
        self.rungs = _rungs(self.fidelity, self.eta)
        self.brackets = min(self.brackets_wanted, len(self.rungs))
        self._keys: dict[int, str] = {}  # record id -> its configuration (without fidelity)
        # The layout, kept as records arrive: each configuration's first rung (its bracket),
        # how many started at each rung, and each rung's record ids and configurations.
        self._first: dict[str, int] = {}
        self._started = [0] * len(self.rungs)
        self._ids: list[list[int]] = [[] for _ in self.rungs]
        self._keys_at: list[set[str]] = [set() for _ in self.rungs]
        self.model = bool(model)
        self.random_fraction = float(random_fraction)
        self.min_points = int(min_points or self.transform.ndim + 2)
        self.gamma = float(gamma or 1 / self.eta)
        self.n_candidates = int(n_candidates)
        self.bandwidth, self.floor, self.k_neighbours = 0.7, 0.5, 2  # TPE's kernels (_Parzen)

    def ask(self) -> Trial:
        trial_id = len(self.records)
        promoted = self._promotion()
        if promoted is not None:
            record, rung = promoted
            params = dict(record.params)
        else:
            rng = np.random.default_rng([self.seed, trial_id])
            x = self._uniform(rng, 1)[0]
            if self.model and rng.random() >= self.random_fraction:
                x = self._modelled(rng, x)
            params = self.transform.decode(x)
            rung = self._new_bracket()
        params[self.fidelity.name] = self._budget(rung)
        return self._add(trial_id, params)

    def _modelled(self, rng: np.random.Generator, prior: np.ndarray) -> np.ndarray:
        """A new configuration from TPE's density ratio fitted on the highest rung with
        `min_points` results (the most faithful ranking there is enough of); `prior` until
        one has. Good = the top `gamma` of that rung; bad = the rest, its failures and, at
        half weight, the new configurations still running (so parallel asks spread out)."""
        from parasearch.samplers.tpe import _Parzen

        for rung in range(len(self.rungs) - 1, -1, -1):
            ids = self._in_state(rung, COMPLETE)
            if len(ids) >= self.min_points:
                break
        else:
            return prior
        order = ids[np.argsort(self._losses[ids], kind="stable")]
        n_good = max(1, math.ceil(self.gamma * len(ids)))
        failed = self._in_state(rung, FAILED)
        pending = np.flatnonzero(self._states[:len(self.records)] == PENDING)
        running = [i for i in pending.tolist()
                   if self._first[self._key(self.records[i])] == self.rung_of(self.records[i])]
        bad = np.array([*order[n_good:], *failed, *running], int)
        weights = np.concatenate([np.ones(len(ids) - n_good + len(failed)),
                                  np.full(len(running), 0.5)])
        if len(bad) == 0:
            return prior
        low = _Parzen(self, self._xs[order[:n_good]], np.ones(n_good))
        high = _Parzen(self, self._xs[bad], weights)
        candidates = self.transform.snap(low.sample(rng, self.n_candidates))
        score = low.log_pdf(candidates) - high.log_pdf(candidates)
        return candidates[int(np.argmax(score))]

    def _suggest(self, rng: np.random.Generator) -> np.ndarray:  # ask() is overridden
        return self._uniform(rng, 1)[0]

    # -- derived from the history ---------------------------------------------------------------

    def rung_of(self, record: Record) -> int:
        value = float(record.params[self.fidelity.name])
        return min(range(len(self.rungs)), key=lambda k: abs(self.rungs[k] - value))

    def _key(self, record: Record) -> str:
        key = self._keys.get(record.id)
        if key is None:  # parameters never change: each record's key is made once
            key = self._keys[record.id] = json.dumps(
                {k: v for k, v in record.params.items() if k != self.fidelity.name},
                sort_keys=True, default=str)
        return key

    def _add(self, trial_id: int, params: dict[str, Any]) -> Trial:
        """Every new record (asked or adopted) also goes into the layout, kept as records
        arrive rather than rebuilt at each ask: O(1) per trial instead of O(n)."""
        trial = super()._add(trial_id, params)
        record = self.records[-1]
        rung, key = self.rung_of(record), self._key(record)
        if key not in self._first:
            self._first[key] = rung
            self._started[rung] += 1
        self._ids[rung].append(record.id)
        self._keys_at[rung].add(key)
        return trial

    def _in_state(self, rung: int, state: str) -> np.ndarray:
        """The ids of the rung's records in `state`, in the order they were added."""
        ids = np.array(self._ids[rung], int)
        return ids[self._states[ids] == state]

    def _promotion(self) -> tuple[Record, int] | None:
        """A configuration to run at the next rung, from the highest rung that has one: one in
        the top 1/η of its rung's results that has not run at the next rung yet."""
        for rung in range(len(self.rungs) - 2, -1, -1):
            done = self._in_state(rung, COMPLETE)
            top = done[np.argsort(self._losses[done], kind="stable")[:int(len(done) // self.eta)]]
            for i in top.tolist():
                if self._key(self.records[i]) not in self._keys_at[rung + 1]:
                    return self.records[i], rung + 1
        return None

    def _new_bracket(self) -> int:
        """The rung a new configuration starts at: the bracket furthest below its share.
        Shares are Hyperband's: the bracket of s halvings gets ⌈(S+1)/(s+1)·η^s⌉
        configurations per round, so every bracket spends about the same budget (the one that
        starts at full fidelity gets the fewest)."""
        if self.brackets == 1:
            return 0
        counts = self._started
        top = len(self.rungs) - 1
        shares = [math.ceil((top + 1) / (top - b + 1) * self.eta ** (top - b))
                  for b in range(self.brackets)]
        return min(range(self.brackets), key=lambda b: (counts[b] / shares[b], b))

    def _budget(self, rung: int) -> Any:
        value = self.rungs[rung]
        whole = all(float(v).is_integer() for v in (self.fidelity.low, self.fidelity.high))
        return int(round(value)) if whole else float(value)


class HyperbandSampler(AshaSampler):
    name = "hyperband"
    brackets_wanted = 1_000  # as many as there are rungs


def _rungs(fidelity: Fidelity, eta: float) -> list[float]:
    count = int(math.floor(math.log(fidelity.high / fidelity.low, eta) + 1e-9)) + 1
    rungs = [fidelity.low * eta ** k for k in range(count)]
    if rungs[-1] < fidelity.high * (1 - 1e-9):
        rungs.append(float(fidelity.high))
    return rungs
