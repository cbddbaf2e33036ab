"""Reading a search: its trials from the search store through parasearch (`open_search`,
`trials`, `ranked`), and the figures of `parasearch report` (`parasearch.report.figures`).

The store is shared by every driver of the search (SQLite here, or PostgreSQL): the trial
states it counts are the search's, while the journal beside it holds only what ran here.
"""

from __future__ import annotations

import json
import threading

from orchestra.discovery import Entry
from orchestra.records import NotFound
from parasearch import trials as record
from parasearch.report import figures
from parasearch.space import Fidelity, Space
from parasearch.store import Store

TOP = 10
_stores: dict[str, Store] = {}  # one engine (connection pool) per search, kept while serving
_lock = threading.Lock()


def store(entry: Entry) -> Store:
    with _lock:
        found = _stores.get(entry.id)
        if found is None:
            try:
                found = record.open_search(_name(entry), entry.folder)
            except Exception as error:  # OrchestraError, or a store that cannot be reached
                raise NotFound(f"search {entry.name!r}: {error}") from None
            _stores[entry.id] = found
        return found


def _name(entry: Entry) -> str:
    journal = entry.journal
    if journal is not None:
        local = record.local_journal(entry.folder.name, entry.folder)
        if local is not None:
            try:
                return str(local.meta().get("name") or entry.name)
            finally:
                local.close()
    return entry.name


def alive(entry: Entry) -> bool:
    from liborchestra.journal import driver_alive

    return entry.journal is not None and driver_alive(entry.journal)


def summary(entry: Entry) -> dict:
    """The search's trial counts (all drivers) and its settings."""
    s = store(entry)
    counts = s.counts()
    meta = s.meta()
    return {"name": str(meta.get("name") or entry.name), "counts": counts,
            "total": sum(counts.values()), "meta": meta, "alive": alive(entry)}


def fingerprint(entry: Entry) -> object:
    s = store(entry)
    return tuple(sorted(s.counts().items())), alive(entry)


def data(entry: Entry) -> dict:
    """Everything the search page draws: counts, the best trials, the figures as JSON."""
    s = store(entry)
    meta = s.meta()
    rows = record.trials(s)
    counts = s.counts()
    maximize = bool(meta.get("maximize"))
    fidelity = next((d.name for d in Space.parse(meta["priors"]) if isinstance(d, Fidelity)),
                    None)
    best = record.ranked(rows, maximize)[:TOP]
    return {
        "counts": counts, "total": sum(counts.values()), "alive": alive(entry),
        "completed": sum(1 for r in rows if r.state == "completed" and r.value is not None),
        "n": meta.get("n"),
        "best": [{"trial": r.seq, "value": r.value, "params": r.params, "node": r.node}
                 for r in best],
        "figures": {name: json.loads(fig.to_json())
                    for name, fig in figures(rows, maximize, fidelity).items()},
    }
