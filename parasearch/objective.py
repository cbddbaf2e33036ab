"""The objective of a trial, read from its fetched run folder with nothing of ours installed on
the cluster: a `results.json` (`{"objective": v, "metrics": {...}}`) or, as the original
runaway's contract, a `features` file or the last `RUNAWAY_FEATURES: v ...` line of stdout (the
first value is the objective, the others become metrics `feature_1`, `feature_2`...)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs

from liborchestra.sched import find_features

RESULTS_FILE = "results.json"


@attrs.frozen
class Objective:
    value: float | None  # None: the trial gave no usable objective (see `problem`)
    metrics: dict[str, float] = attrs.field(factory=dict)
    problem: str = ""


def read_objective(folder: Path) -> Objective:
    """The objective of the run folder `folder`, or why there is none."""
    results = folder / RESULTS_FILE
    if results.is_file():
        return _from_results(results)
    stdout = folder / "stdout"
    text = stdout.read_text(errors="replace") if stdout.is_file() else ""
    try:
        features = find_features(folder, text)
    except ValueError as error:
        return Objective(None, problem=f"RUNAWAY_FEATURES: {error}")
    if not features:
        return Objective(None, problem="no objective: print `RUNAWAY_FEATURES: <value>` or "
                                       f"write {RESULTS_FILE} with an \"objective\"")
    metrics = {f"feature_{i}": v for i, v in enumerate(features[1:], 1)}
    return _checked(features[0], metrics, "RUNAWAY_FEATURES")


def _from_results(path: Path) -> Objective:
    try:
        data = json.loads(path.read_text(errors="replace"))
    except ValueError as error:
        return Objective(None, problem=f"{RESULTS_FILE} is not JSON: {error}")
    if not isinstance(data, dict) or "objective" not in data:
        return Objective(None, problem=f"{RESULTS_FILE} has no \"objective\"")
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        return Objective(None, problem=f"{RESULTS_FILE}: \"metrics\" must be an object")
    numeric = {str(k): float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return _checked(data["objective"], numeric, RESULTS_FILE)


def _checked(value: object, metrics: dict[str, float], where: str) -> Objective:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Objective(None, metrics, f"{where}: the objective {value!r} is not a number")
    if not math.isfinite(float(value)):
        return Objective(None, metrics, f"{where}: the objective is {value}")
    return Objective(float(value), metrics)
