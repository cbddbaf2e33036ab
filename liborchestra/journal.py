"""Journal: the SQLite record of a batch, written by the driver only.

Every execution of a batch has one row, in sweep order: its arguments, state, attempts, where it
ran and how it ended. The `running` transition is committed *before* the execution is launched,
with the run id, so after a crash (even SIGKILL) `--resume` knows what was in flight and where,
and can recover a result that finished remotely instead of running it again. WAL mode with
synchronous=NORMAL: a commit survives the death of the process, and costs microseconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from liborchestra.errors import OrchestraError
from liborchestra.transfer import OUTPUT_MARKER

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    seq INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    argv TEXT NOT NULL,
    label TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    run TEXT,
    node TEXT,
    slot TEXT,
    ecode INTEGER,
    started REAL,
    finished REAL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS by_state ON executions (state, seq);
CREATE TABLE IF NOT EXISTS allocations (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, granted REAL, released REAL, reason TEXT
);
"""
FINAL = ("completed", "failed", "lost", "cancelled")


class JournalError(OrchestraError):
    pass


@attrs.frozen
class Row:
    seq: int
    uuid: str
    argv: tuple[str, ...]
    label: str
    state: str
    attempts: int
    lost: int
    run: str | None
    node: str | None
    slot: str | None
    ecode: int | None
    message: str | None


class Journal:
    """One batch's record. Open with `Journal.create` (new) or `Journal.open` (existing)."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path, self.db = path, db

    @classmethod
    def create(cls, path: Path, meta: dict[str, object]) -> Journal:
        if path.exists():
            raise JournalError(f"{path}: a batch of that name exists; use --resume to continue "
                               "it, or another --name")
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / OUTPUT_MARKER).touch()  # never shipped as code, even from a code folder
        journal = cls(path, _connect(path))
        with journal.db:
            journal.db.executemany("INSERT INTO meta VALUES (?, ?)",
                                   [(k, json.dumps(v)) for k, v in meta.items()])
        return journal

    @classmethod
    def open(cls, path: Path) -> Journal:
        if not path.is_file():
            raise JournalError(f"{path}: no such batch journal")
        try:
            return cls(path, _connect(path))
        except sqlite3.DatabaseError as error:
            raise JournalError(f"{path}: not a batch journal ({error})") from None

    def close(self) -> None:
        self.db.close()

    # -- meta ----------------------------------------------------------------------------------

    def meta(self) -> dict[str, object]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: object) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # -- executions ----------------------------------------------------------------------------

    def add(self, points: Iterable[tuple[str, tuple[str, ...], str]], chunk: int = 5000) -> int:
        """Insert (uuid, argv, label) rows in order, in chunks: bounded memory for any size."""
        total = 0
        batch: list[tuple[str, str, str]] = []
        with self.db:
            for uuid, argv, label in points:
                batch.append((uuid, json.dumps(list(argv)), label))
                if len(batch) >= chunk:
                    self.db.executemany(
                        "INSERT INTO executions (uuid, argv, label) VALUES (?, ?, ?)", batch)
                    total += len(batch)
                    batch.clear()
            self.db.executemany("INSERT INTO executions (uuid, argv, label) VALUES (?, ?, ?)",
                                batch)
        return total + len(batch)

    def pending(self, after: int = 0, limit: int = 1000) -> list[Row]:
        """Queued rows in sweep order, after `seq`; the driver pages through them."""
        return self._rows("WHERE state = 'queued' AND seq > ? ORDER BY seq LIMIT ?",
                          (after, limit))

    def in_flight(self) -> list[Row]:
        """Rows that were running when the driver stopped."""
        return self._rows("WHERE state = 'running' ORDER BY seq", ())

    def rows(self, state: str | None = None, limit: int = 1_000_000) -> list[Row]:
        if state is None:
            return self._rows("ORDER BY seq LIMIT ?", (limit,))
        return self._rows("WHERE state = ? ORDER BY seq LIMIT ?", (state, limit))

    def _rows(self, where: str, args: tuple) -> list[Row]:
        query = ("SELECT seq, uuid, argv, label, state, attempts, lost, run, node, slot, ecode, "
                 f"message FROM executions {where}")
        return [Row(r[0], r[1], tuple(json.loads(r[2])), *r[3:]) for r in
                self.db.execute(query, args)]

    def started(self, seq: int, run: str) -> None:
        with self.db:
            self.db.execute("UPDATE executions SET state = 'running', run = ?, started = ?, "
                            "attempts = attempts + 1 WHERE seq = ?", (run, time.time(), seq))

    def placed(self, seq: int, node: str, slot: str) -> None:
        with self.db:
            self.db.execute("UPDATE executions SET node = ?, slot = ? WHERE seq = ?",
                            (node, slot, seq))

    def finished(self, seq: int, state: str, ecode: int | None, message: str = "",
                 lost: bool = False) -> None:
        with self.db:
            self.db.execute(
                "UPDATE executions SET state = ?, ecode = ?, message = ?, finished = ?, "
                "lost = lost + ? WHERE seq = ?",
                (state, ecode, message, time.time(), int(lost), seq))

    def requeue(self, states: Iterable[str]) -> int:
        """Put executions in these states back in the queue (retry); returns how many."""
        states = list(states)
        marks = ",".join("?" * len(states))
        with self.db:
            cursor = self.db.execute(
                f"UPDATE executions SET state = 'queued', attempts = 0, lost = 0 "
                f"WHERE state IN ({marks})", states)
        return cursor.rowcount

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM executions GROUP BY state"))

    # -- allocations ---------------------------------------------------------------------------

    def allocation(self, allocation_id: str, state: str, reason: str = "") -> None:
        now = time.time()
        with self.db:
            if state == "granted":
                self.db.execute("INSERT OR REPLACE INTO allocations VALUES (?, ?, ?, NULL, '')",
                                (allocation_id, state, now))
            else:
                self.db.execute("UPDATE allocations SET state = ?, released = ?, reason = ? "
                                "WHERE id = ?", (state, now, reason, allocation_id))

    def live_allocations(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT id FROM allocations WHERE state = 'granted'")]


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def batch_dir(name: str, root: Path | None = None) -> Path:
    return (root or Path.cwd() / "batch") / name


def journal_path(name: str, root: Path | None = None) -> Path:
    return batch_dir(name, root) / "journal.sqlite"


def iter_chunks(journal: Journal, size: int = 1000) -> Iterator[Row]:
    """Every queued row in order, a page at a time."""
    after = 0
    while True:
        page = journal.pending(after, size)
        if not page:
            return
        yield from page
        after = page[-1].seq


def driver_alive(meta: dict[str, object]) -> bool:
    """Whether the driver recorded in the journal still runs (same pid and start time)."""
    pid = meta.get("driver_pid")
    if not isinstance(pid, int):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return False
    return started == str(meta.get("driver_start")) and os.path.exists(f"/proc/{pid}")
