"""Reading a search's record: its trials as rows for `status`, `best`, `export` and `report`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import attrs

from liborchestra.errors import OrchestraError
from liborchestra.journal import Journal

RECORD = "search.sqlite"


@attrs.frozen
class TrialRow:
    seq: int
    uuid: str
    params: dict
    state: str
    value: float | None
    metrics: dict
    node: str | None
    duration: float | None
    message: str


def search_folder(name: str, output: Path | None = None) -> Path:
    return (output or Path("search") / name).resolve()


def open_search(name: str, output: Path | None = None) -> Journal:
    path = search_folder(name, output) / RECORD
    if not path.is_file():
        raise OrchestraError(f"no search named {name!r} (no {path})")
    journal = Journal.open(path)
    if journal.meta().get("kind") != "search":
        raise OrchestraError(f"{path}: not a parasearch record")
    return journal


def trials(journal: Journal) -> list[TrialRow]:
    query = ("SELECT seq, uuid, payload, state, value, node, started, finished, message "
             "FROM executions ORDER BY seq")
    out = []
    for seq, uuid, payload, state, value, node, started, finished, message in \
            journal.db.execute(query):
        data = json.loads(payload or "{}")
        duration = finished - started if started and finished and state != "queued" else None
        out.append(TrialRow(seq, uuid, data.get("params", {}), state, value,
                            data.get("metrics", {}), node, duration, message or ""))
    return out


def ranked(rows: list[TrialRow], maximize: bool) -> list[TrialRow]:
    """Completed trials, best first."""
    done = [r for r in rows if r.state == "completed" and r.value is not None]
    return sorted(done, key=lambda r: -r.value if maximize else r.value)


def as_records(rows: list[TrialRow]) -> list[dict]:
    return [{"trial": r.seq, "uuid": r.uuid, "state": r.state, "objective": r.value,
             "params": r.params, "metrics": r.metrics, "node": r.node, "duration": r.duration,
             "message": r.message} for r in rows]


def to_csv(rows: list[TrialRow]) -> str:
    """One row per trial: parameters and metrics as columns."""
    names = sorted({k for r in rows for k in r.params})
    metrics = sorted({k for r in rows for k in r.metrics})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "uuid", "state", "objective", *names, *metrics, "node",
                     "duration", "message"])
    for r in rows:
        writer.writerow([r.seq, r.uuid, r.state, "" if r.value is None else repr(r.value),
                         *(r.params.get(k, "") for k in names),
                         *(r.metrics.get(k, "") for k in metrics), r.node or "",
                         "" if r.duration is None else f"{r.duration:.3f}", r.message])
    return buffer.getvalue()
