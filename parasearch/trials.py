"""Reading a search's record: its trials as rows for `status`, `best`, `export` and `report`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import attrs

from liborchestra.errors import OrchestraError
from liborchestra.journal import Journal
from parasearch.store import Store, shown, store_url

RECORD = "search.sqlite"  # the default store (SQLite), in the search folder
JOURNAL = "journal.sqlite"  # the journal of the driver that runs in this folder


@attrs.frozen
class TrialRow:
    seq: int  # the trial's number in the search
    uuid: str  # its run folder (in the folder of the driver that ran it)
    params: dict
    state: str
    value: float | None
    metrics: dict
    node: str | None
    duration: float | None
    message: str
    driver: str = ""


def search_folder(name: str, output: Path | None = None) -> Path:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise OrchestraError(f"--name {name!r}: a search name is a name, not a path")
    return (output or Path("search") / name).resolve()


def open_search(name: str, output: Path | None = None, storage: str | None = None) -> Store:
    """The store of the search `name`: the one this folder's driver uses, else `storage`
    (default: SQLite in ./search/NAME)."""
    folder = search_folder(name, output)
    journal = folder / JOURNAL
    if storage is None and journal.is_file():
        storage = Journal.open(journal).meta().get("storage")
    store = Store(store_url(storage, folder), name) if storage or (folder / RECORD).is_file() \
        else None
    if store is None or not store.exists():
        raise OrchestraError(f"no search named {name!r}"
                             + (f" in {shown(store.url)}" if store else f" (no {folder})"))
    return store


def local_journal(name: str, output: Path | None = None) -> Journal | None:
    path = search_folder(name, output) / JOURNAL
    return Journal.open(path) if path.is_file() else None


def trials(store: Store) -> list[TrialRow]:
    out = []
    for t in store.trials():
        duration = t.finished - t.started if t.started and t.finished else None
        out.append(TrialRow(t.number, t.run or "", t.params, t.state, t.value, t.metrics,
                            t.node, duration, t.message, t.driver))
    return out


def ranked(rows: list[TrialRow], maximize: bool) -> list[TrialRow]:
    """Completed trials, best first."""
    done = [r for r in rows if r.state == "completed" and r.value is not None]
    return sorted(done, key=lambda r: -r.value if maximize else r.value)


def as_records(rows: list[TrialRow]) -> list[dict]:
    return [{"trial": r.seq, "uuid": r.uuid, "state": r.state, "objective": r.value,
             "params": r.params, "metrics": r.metrics, "node": r.node, "duration": r.duration,
             "driver": r.driver, "message": r.message} for r in rows]


def to_csv(rows: list[TrialRow]) -> str:
    """One row per trial: parameters and metrics as columns."""
    names = sorted({k for r in rows for k in r.params})
    metrics = sorted({k for r in rows for k in r.metrics})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "uuid", "state", "objective", *names, *metrics, "node",
                     "duration", "driver", "message"])
    for r in rows:
        writer.writerow([r.seq, r.uuid, r.state, "" if r.value is None else repr(r.value),
                         *(r.params.get(k, "") for k in names),
                         *(r.metrics.get(k, "") for k in metrics), r.node or "",
                         "" if r.duration is None else f"{r.duration:.3f}", r.driver,
                         r.message])
    return buffer.getvalue()
