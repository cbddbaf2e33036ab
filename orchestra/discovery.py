"""Finding the records under the served folders: expegit campaigns, batch and sched journals
and search records, found again every few seconds so a run started anywhere (by the CLI or by
the page) appears.

A walk stops at a record's folder: the per-execution folders under it (100,000 of them in a big
batch) are never listed, so a rescan costs the same whatever the batches hold.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import attrs

from orchestra.campaigns import is_campaign

JOURNAL = "journal.sqlite"  # runaway batch and sched (liborchestra.journal)
SEARCH = "search.sqlite"  # parasearch (parasearch.trials.RECORD)
CAMPAIGN = "expegit.yml"  # expegit (expegit.campaign.SETTINGS, beside .git)
SKIP = {".git", ".venv", "node_modules", "__pycache__", ".orchestra"}
MAX_DEPTH = 6  # folders below a served folder that are looked into
RESCAN = 2.0  # seconds a scan is reused


@attrs.frozen
class Entry:
    """One record found: what kind, its name, where, and a stable id for URLs."""

    kind: str  # "campaign", "batch", "sched" or "search"
    name: str
    path: Path  # the journal; a search's store when its driver ran elsewhere; a campaign's
    # settings file
    id: str

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def journal(self) -> Path | None:
        """The journal of the driver that ran here (a search's store is not one)."""
        return self.path if self.path.name == JOURNAL else None


def entry_id(path: Path) -> str:
    """A URL-safe id that stays the same across rescans and restarts (a hash of the path)."""
    return hashlib.sha256(str(path).encode()).hexdigest()[:12]


def _kind(folder: Path, files: list[str] | set[str]) -> str:
    """A search folder holds its store (search.sqlite) or sits under search/ (a store
    elsewhere, e.g. PostgreSQL); a sched's under sched/; every other journal is a batch's."""
    if SEARCH in files or folder.parent.name == "search":
        return "search"
    return "sched" if folder.parent.name == "sched" else "batch"


def _entry(folder: Path, files: list[str] | set[str]) -> Entry | None:
    if is_campaign(folder, files):  # its runs/ and code/ are never walked
        path = folder / CAMPAIGN
        return Entry("campaign", folder.name, path, entry_id(path))
    record = JOURNAL if JOURNAL in files else SEARCH if SEARCH in files else None
    if record is None:
        return None
    path = folder / record
    return Entry(_kind(folder, files), folder.name, path, entry_id(path))


def _marks(folder: Path) -> set[str]:
    """The record files `folder` holds, by one stat each: a record's folder (a batch's holds
    a folder per execution) is never listed."""
    return {name for name in (CAMPAIGN, JOURNAL, SEARCH) if os.path.isfile(folder / name)}


def scan(roots: list[Path]) -> list[Entry]:
    """Every record under `roots`, sorted by kind then name (symlinked folders not followed,
    hidden and tool folders skipped, at most MAX_DEPTH deep)."""
    found: dict[Path, Entry] = {}
    for root in roots:
        stack = [(root.resolve(), 0)]
        while stack:
            here, depth = stack.pop()
            entry = _entry(here, _marks(here))
            if entry is not None:
                found[entry.path] = entry
                continue
            if depth >= MAX_DEPTH:
                continue
            try:
                with os.scandir(here) as entries:
                    below = [e.name for e in entries if e.is_dir(follow_symlinks=False)
                             and e.name not in SKIP and not e.name.startswith(".")]
            except OSError:
                continue
            stack += [(here / name, depth + 1) for name in below]
    return sorted(found.values(), key=lambda e: (e.kind, e.name, str(e.path)))


class Catalog:
    """The records under the served folders, rescanned at most every RESCAN seconds; runs the
    server itself starts are added at once (`add`)."""

    def __init__(self, roots: list[Path], rescan: float = RESCAN) -> None:
        self.roots = [r.resolve() for r in roots]
        self.rescan = rescan
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._when = float("-inf")

    def entries(self) -> list[Entry]:
        with self._lock:
            if time.monotonic() - self._when > self.rescan:
                fresh = {e.id: e for e in scan(self.roots)}
                self._entries = {**{k: v for k, v in self._entries.items()
                                    if v.path.is_file()}, **fresh}
                self._when = time.monotonic()
            return sorted(self._entries.values(), key=lambda e: (e.kind, e.name, str(e.path)))

    def get(self, entry_id: str) -> Entry | None:
        found = {e.id: e for e in self.entries()}.get(entry_id)
        return found if found is not None and found.path.is_file() else None

    def add(self, path: Path) -> Entry:
        folder = path.resolve().parent
        entry = _entry(folder, _marks(folder))
        assert entry is not None, folder
        with self._lock:
            self._entries[entry.id] = entry
        return entry
