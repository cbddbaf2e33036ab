"""Result rows: one per execution of a journal, as `runaway results`, the web page and
parasearch show them. The data model is the journal's row; this module only reads it, parses
the parameters out of the arguments, and reads an execution's metrics from its folder.

Metrics come, as parasearch/objective.py reads them, from a `results.json`
(`{"objective": v, "metrics": {...}}`) or, the original runaway's contract, a `features` file
or the last `RUNAWAY_FEATURES: v ...` line of stdout (the first value is the objective, the
others are `feature_1`, `feature_2`...).

Each execution folder also gets a record file (`runaway.json`: arguments, parameters, code
digest, state...) so that the folder explains itself without the journal.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Iterable

import attrs

from liborchestra.journal import Journal, Row
from liborchestra.node_keeper import read_bytes, write_bytes
from liborchestra.sched import find_features

RECORD_FILE = "runaway.json"
RESULTS_FILE = "results.json"
Value = str | int | float | bool
_INT = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def typed(text: str) -> Value:
    """A parameter value as a number when it reads as one (so `--sort lr` sorts numbers)."""
    if _INT.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        return float(text)
    return text


def _option(word: str) -> bool:
    return word.startswith("-") and len(word) > 1 and not _NUMBER.fullmatch(word)


def parse_parameters(argv: Iterable[str]) -> dict[str, Value]:
    """`--lr=0.1 --bs 32 --fast data.csv` -> {lr: 0.1, bs: 32, fast: True, arg1: 'data.csv'}:
    options by name (`--name=value` or `--name value`), flags as True, the others by position."""
    words = list(argv)
    out: dict[str, Value] = {}
    position, i = 0, 0
    while i < len(words):
        word = words[i]
        if _option(word):
            name, equal, value = word.lstrip("-").partition("=")
            if equal:
                out[name] = typed(value)
            elif i + 1 < len(words) and not _option(words[i + 1]):
                out[name] = typed(words[i + 1])
                i += 1
            else:
                out[name] = True
        else:
            position += 1
            out[f"arg{position}"] = typed(word)
        i += 1
    return out


@attrs.frozen
class Metrics:
    objective: float | None = None
    values: dict[str, float] = attrs.field(factory=dict)
    problem: str = ""  # why there is no objective, when the folder says something wrong


def read_metrics(folder: Path) -> Metrics:
    """The objective and metrics of a fetched execution folder (empty when it has none)."""
    text = _text(os.path.join(folder, RESULTS_FILE))  # opened, not looked at first: once
    if text is not None:  # per execution, and most folders have no such file
        try:
            data = json.loads(text)
        except ValueError as error:
            return Metrics(problem=f"{RESULTS_FILE} is not JSON: {error}")
        if not isinstance(data, dict):
            return Metrics(problem=f"{RESULTS_FILE}: expected an object")
        raw = data.get("metrics") or {}
        values = {str(k): float(v) for k, v in raw.items() if _number(v)} \
            if isinstance(raw, dict) else {}
        objective = data.get("objective")
        return Metrics(float(objective) if _number(objective) else None, values)
    try:
        features = find_features(folder, _text(os.path.join(folder, "stdout")) or "")
    except ValueError as error:
        return Metrics(problem=f"RUNAWAY_FEATURES: {error}")
    if not features:
        return Metrics()
    return Metrics(features[0], {f"feature_{i}": v for i, v in enumerate(features[1:], 1)})


def _text(path: str) -> str | None:
    data = read_bytes(path)
    return None if data is None else data.decode(errors="replace")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


@attrs.frozen
class ResultRow:
    """One execution as people see it: times are epoch seconds (wall clock)."""

    seq: int
    uuid: str
    label: str
    argv: tuple[str, ...]
    parameters: dict[str, Value]
    state: str
    ecode: int | None
    attempts: int
    node: str | None
    slot: str | None
    allocation: str | None
    digest: str | None
    started: float | None
    finished: float | None
    objective: float | None
    metrics: dict[str, float]
    post: int | None  # the post-command's exit status, when there was one
    message: str
    folder: Path
    history: tuple[dict, ...] = ()  # earlier attempts: run, digest, exit code, their folder

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None or self.state in ("queued",
                                                                           "submitted",
                                                                           "running"):
            return None
        return max(0.0, self.finished - self.started)

    def as_dict(self) -> dict:
        data = attrs.asdict(self, recurse=False)
        data["argv"] = list(self.argv)
        data["folder"] = str(self.folder)
        data["duration"] = self.duration
        data["history"] = list(self.history)
        return data


def result_row(row: Row, folder: Path) -> ResultRow:
    """The result row of a journal row whose execution folder is `folder`. Metrics recorded
    in the payload are used; else (sched, older batches) they are read from the folder."""
    payload = row.payload or {}
    if "metrics" in payload:
        metrics = Metrics(payload.get("objective"), dict(payload["metrics"]))
    elif row.state in ("completed", "failed") and folder.is_dir():
        metrics = read_metrics(folder)
    else:
        metrics = Metrics()
    objective = metrics.objective if metrics.objective is not None else row.value
    return ResultRow(row.seq, row.uuid, row.label, row.argv, parse_parameters(row.argv),
                     row.state, row.ecode, row.attempts, row.node, row.slot, row.allocation,
                     row.digest, row.started, row.finished, objective, metrics.values,
                     payload.get("post"), row.message or "", folder,
                     tuple(payload.get("history", ())))


def result_rows(journal: Journal) -> list[ResultRow]:
    """Every execution of a journal, in the order it was decided."""
    base = journal.path.parent
    return [result_row(row, base / row.uuid) for row in journal.rows()]


def record(row: Row, **extra: object) -> dict:
    """What an execution folder's record file holds."""
    return {"uuid": row.uuid, "run": row.run, "arguments": list(row.argv), "label": row.label,
            "parameters": parse_parameters(row.argv), "digest": row.digest,
            "state": row.state, "ecode": row.ecode, "attempts": row.attempts, "node": row.node,
            "slot": row.slot, "allocation": row.allocation, "started": row.started,
            "finished": row.finished, **extra}


def write_record(folder: Path, data: dict) -> None:
    """Write `folder/runaway.json` atomically (a crash never leaves half a record)."""
    tmp = os.path.join(folder, f".{RECORD_FILE}.tmp")  # one writer per folder: the driver
    text = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
    try:
        write_bytes(tmp, text)
    except FileNotFoundError:  # made when missing: looked at only then
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(tmp, text)
    os.replace(tmp, os.path.join(folder, RECORD_FILE))


__all__ = ["Metrics", "RECORD_FILE", "ResultRow", "parse_parameters", "read_metrics", "record",
           "result_row", "result_rows", "typed", "write_record"]
