"""What the pages show of an expegit campaign: its records (read with expegit's own
`record.read`), and the executions its `expegit run` drivers have in flight now (read from their
journals with liborchestra's Journal).

A campaign holds one folder per execution and no database, so each campaign gets an index: a
private SQLite table (a temporary database SQLite keeps on disk and deletes on close, so the
server's memory does not grow with the campaign) with the columns of a journal's `executions`,
filled once from the
records and then only with the folders that are new since the last look (a record, written
last and atomically, never changes afterwards; a folder that went away was removed). Pages are
then answered by the same filtered, sorted, paged query as a batch's (`records.page`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import attrs

from expegit.campaign import PATCHES, SETTINGS, Campaign, CampaignError
from expegit.record import RECORD, Record, parse_parameters, read
from liborchestra.journal import Journal, JournalError
from orchestra import records

REFRESH = 1.0  # seconds an index is trusted before the campaign is looked at again
IN_FLIGHT = ("submitted", "running")
CHUNK = 500  # records read before they are added to the index
SORTS = {**{k: v for k, v in records.SORTS.items() if k != "value"}, "commit": "digest",
         "id": "uuid"}
_TABLE = """CREATE TABLE executions (
    seq INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, argv TEXT NOT NULL, label TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER, node TEXT, slot TEXT, allocation TEXT, digest TEXT,
    ecode INTEGER, value REAL, started REAL, finished REAL, message TEXT, payload TEXT,
    pending INTEGER NOT NULL DEFAULT 0);
CREATE INDEX by_state ON executions (state, seq);
CREATE INDEX by_started ON executions (started, seq);"""
_HEX = re.compile(r"[0-9a-f]{16,128}")


def is_campaign(folder: Path, files: set[str] | list[str]) -> bool:
    """expegit's mark of a campaign: its settings file beside a git repository."""
    return SETTINGS in files and (folder / ".git").exists()


def _row(rec: Record, full: bool = True) -> tuple:
    """A record as the columns after `seq`; the index keeps no payload (`full=False`: the
    table shows none, and an execution's page reads its record again)."""
    commit = rec.commit[:12] + ("+patch" if rec.patch else "")
    payload = {} if not full else {
        "params": rec.parameters, "metrics": rec.metrics, "commit": rec.commit,
        "patch": rec.patch, "run": rec.run, "by": rec.by, "profile": rec.profile,
        "script": rec.script, "rerun_of": rec.rerun_of, "large": list(rec.large)}
    return (rec.id, json.dumps(list(rec.arguments)), rec.label or " ".join(rec.arguments),
            rec.state, rec.attempts, rec.node, rec.slot, rec.allocation, commit, rec.exit_code,
            None, rec.started, rec.ended, rec.message, json.dumps(payload, default=str))


@attrs.frozen
class Run:
    """One `expegit run` of this clone, as its journal says now."""

    name: str
    alive: bool
    counts: dict[str, int]


class Index:
    """The executions of one campaign in an in-memory table, kept up to date by `refresh`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self.campaign = Campaign(root)
        except (CampaignError, OSError, ValueError) as error:
            raise records.NotFound(f"{root}: not a readable campaign ({error})") from None
        self.db = sqlite3.connect("", check_same_thread=False)  # "": a temporary file
        self.db.executescript(_TABLE)
        self.lock = threading.RLock()
        self.recorded: set[str] = set()
        self.version = 0  # moves whenever the table changes
        self.runs: list[Run] = []
        self._flying: dict[str, tuple] = {}  # journal -> its fingerprint, when last read
        self._when = float("-inf")

    @property
    def name(self) -> str:
        return self.root.name

    def folder(self, run_id: str, exists: bool = True) -> Path:
        """The folder of the execution `run_id` (a plain name under runs/, never a link), or
        NotFound; with `exists=False` also one not fetched yet (an execution in flight)."""
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith(".") \
                or "\0" in run_id:
            raise records.NotFound("no such execution")
        folder = self.campaign.runs / run_id
        there = folder.is_dir() and not folder.is_symlink()
        if not there and (exists or os.path.lexists(folder)):
            raise records.NotFound(f"no execution {run_id!r} in this campaign")
        return folder

    def refresh(self, force: bool = False) -> None:
        with self.lock:
            if not force and time.monotonic() - self._when < REFRESH:
                return
            self._records()
            self._in_flight()
            self._when = time.monotonic()

    def _records(self) -> None:
        """New record folders read (expegit's `read`) and added in chunks, so a first look
        at 100,000 records never holds them all; folders that went away dropped."""
        runs = self.campaign.runs
        try:
            names = {n for n in os.listdir(runs) if not n.startswith(".")}
        except OSError:
            names = set()
        gone = self.recorded - names
        if gone:
            with self.db:
                self.db.executemany("DELETE FROM executions WHERE uuid = ?",
                                    [(n,) for n in gone])
            self.recorded -= gone
            self.version += 1
        chunk: list[Record] = []
        for name in names - self.recorded:
            if os.path.islink(os.path.join(runs, name)) or \
                    not os.path.isfile(os.path.join(runs, name, RECORD)):
                continue  # in flight, or its recording has not finished
            try:
                chunk.append(read(runs / name))
            except (CampaignError, OSError):
                continue  # damaged: `expegit status` names it
            if len(chunk) >= CHUNK:
                self._add(chunk)
                chunk = []
        if chunk:
            self._add(chunk)

    def _add(self, recs: list[Record]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM executions WHERE uuid = ?",
                                [(r.id,) for r in recs])
            self.db.executemany(
                "INSERT INTO executions (uuid, argv, label, state, attempts, node, slot, "
                "allocation, digest, ecode, value, started, finished, message, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row(r, full=False) for r in recs])
        self.recorded |= {r.id for r in recs}
        self.version += 1

    def _journals(self) -> list[Path]:
        """The journals of this clone's runs (expegit keeps them in the clone's private
        state, `Campaign.local`, which is made on first use: not by a reader)."""
        if not (Path(self.campaign.repo.git_dir) / "expegit").is_dir():
            return []
        return sorted((self.campaign.local / "journals").glob("*/journal.sqlite"))

    def _in_flight(self) -> None:
        """Rows running now in this clone's runs, which have no record yet; and each run's
        counts. A journal is read again only when its fingerprint moved."""
        runs, changed, rows = [], False, {}
        paths = self._journals()
        for path in paths:
            try:
                journal = Journal.open(path)
            except JournalError:
                continue
            try:
                meta = journal.meta()
                alive = journal.driver_alive()
                mark = (records.last_change(journal), alive)
                runs.append(Run(str(meta.get("name") or path.parent.name), alive,
                                journal.counts()))
                if self._flying.get(str(path), (None,))[0] == mark:
                    continue
                changed = True
                commit = str(meta.get("commit") or "")[:12] + ("+patch" if meta.get("patch")
                                                               else "")
                rows[str(path)] = (mark, [
                    (r.uuid, json.dumps(list(r.argv)), r.label, r.state, r.attempts, r.node,
                     r.slot, r.allocation, commit, r.started,
                     json.dumps({"run": meta.get("name"), "commit": meta.get("commit"),
                                 "patch": meta.get("patch"),
                                 "params": parse_parameters(r.argv)}))
                    for r in journal.in_flight() if r.uuid not in self.recorded])
            finally:
                journal.close()
        known = {str(p) for p in paths}
        if any(p not in known for p in self._flying):
            changed = True
        self.runs = runs
        if not changed:
            return
        self._flying = {p: v for p, v in self._flying.items() if p in known}
        with self.db:
            self.db.execute("DELETE FROM executions WHERE pending = 1")
            for path, (mark, flying) in rows.items():
                self._flying[path] = (mark, flying)
            for _, flying in self._flying.values():
                for r in flying:
                    if r[0] in self.recorded:
                        continue
                    self.db.execute(
                        "INSERT OR IGNORE INTO executions (uuid, argv, label, state, "
                        "attempts, node, slot, allocation, digest, started, payload, pending) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)", r)
        self.version += 1

    # -- what the pages ask ------------------------------------------------------------------

    def summary(self) -> records.Summary:
        """Counts by state: the records, then what this clone's runs have not recorded yet
        (queued, submitted, running)."""
        self.refresh()
        with self.lock:
            counts = dict(self.db.execute(
                "SELECT state, COUNT(*) FROM executions WHERE pending = 0 GROUP BY state"))
            for run in self.runs:
                for state in ("queued", *IN_FLIGHT):
                    if run.counts.get(state):
                        counts[state] = counts.get(state, 0) + run.counts[state]
            alive = any(r.alive for r in self.runs)
            meta = {"runs": [attrs.asdict(r) for r in self.runs],
                    "code": str(self.campaign.code)}
        return records.Summary(self.name, "campaign", counts, sum(counts.values()), alive,
                               meta)

    def page(self, query: records.Query) -> tuple[list[records.Execution], int]:
        self.refresh()
        with self.lock:
            return records.page(self.db, query, sorts=SORTS)

    def fingerprint(self) -> tuple:
        self.refresh()
        with self.lock:
            return self.version, tuple((r.name, r.alive, tuple(sorted(r.counts.items())))
                                       for r in self.runs)

    def execution(self, run_id: str) -> tuple[records.Execution, Path]:
        """One execution: its record when written (read again with expegit's `read`), else
        the row of the run that has it in flight."""
        folder = self.folder(run_id, exists=False)
        if (folder / RECORD).is_file():
            try:
                rec = read(folder)
            except CampaignError as error:
                raise records.NotFound(str(error)) from None
            return records.execution_of(0, _row(rec)), folder
        self.refresh(force=True)
        with self.lock:
            found = records.by_uuid(self.db, run_id)
        if found is None:
            raise records.NotFound(f"{run_id}: not recorded, and no run of this clone has it")
        return found, folder

    def patch(self, digest: str | None) -> Path | None:
        """The stored patch a dirty execution ran with (expegit keeps it under patches/)."""
        if not digest or not _HEX.fullmatch(digest):
            return None
        root = self.campaign.root.resolve()
        path = (root / PATCHES / f"{digest}.patch").resolve()
        return path if path.is_relative_to(root / PATCHES) and path.is_file() else None

    def close(self) -> None:
        self.db.close()


class Indexes:
    """One index per campaign served, made when first asked for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[Path, Index] = {}

    def get(self, root: Path) -> Index:
        with self._lock:
            index = self._made.get(root)
            if index is None:
                index = self._made[root] = Index(root)
            return index

    def forget_missing(self) -> None:
        with self._lock:
            for root in [r for r in self._made if not (r / SETTINGS).is_file()]:
                self._made.pop(root).close()
