"""Journal: the SQLite record of a driven run (a batch, a sched, a search...), written by
its driver only.

Every execution has one row, in the order it was decided: its arguments, a JSON payload that
belongs to the tool that decided it, its state, attempts, where it ran (node, slot, allocation)
and how it ended. `submitted` (with the run id) and `running` (where it is placed) are committed
together once it is placed, *before* it can start on a node (the driver commits at the
engine's barrier, before the order to start leaves), so after a crash (even SIGKILL)
`--resume` knows what was in flight and where, and can recover a result that finished remotely
instead of running it again; a run that was submitted and never placed simply runs. A final
state is committed before the tool records the result (`recorded` = 0) and marked recorded
after, with the payload the tool wrote meanwhile: a result whose recording a crash interrupted
is recorded again on resume; a final state not committed yet is recovered from its run folder,
which is removed only after the commit. WAL mode with synchronous=NORMAL: a commit survives the
death of the process. Writes that can wait (`commit=False`) join the next commit: each commit is
most of a write's cost, and a driver makes several per execution.

The driver holds an OS lock on `<journal>.lock` for its whole life (`lease`): two drivers of
one journal cannot both run, and a driver killed by SIGKILL leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from liborchestra.errors import OrchestraError
from liborchestra.execution import State
from liborchestra.transfer import OUTPUT_MARKER

VERSION = 2  # schema version (meta `schema`); journals of version 1 are upgraded on open
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
# columns added by version 2 (added to a version-1 journal when it is opened)
COLUMNS_V2 = (
    ("payload", "TEXT NOT NULL DEFAULT '{}'"),  # the deciding tool's data (JSON object)
    ("allocation", "TEXT"),  # the allocation (Slurm job...) the current run is placed in
    ("digest", "TEXT"),  # the code archive's SHA-256 of the current run
    ("value", "REAL"),  # the objective, for tools that have one
    ("recorded", "INTEGER NOT NULL DEFAULT 1"),  # 0: final, but the tool has not recorded it
)
IN_FLIGHT = (State.SUBMITTED.value, State.RUNNING.value)


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
    payload: dict = attrs.field(factory=dict)
    allocation: str | None = None
    digest: str | None = None
    value: float | None = None
    started: float | None = None  # epoch seconds: the current run was handed to the engine
    finished: float | None = None  # epoch seconds: the current run ended


_COLUMNS = ("seq, uuid, argv, label, state, attempts, lost, run, node, slot, ecode, message, "
            "payload, allocation, digest, value, started, finished")


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

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Be this journal's one driver while the block runs: an exclusive OS lock (taken
        atomically, gone with the process whatever kills it), and the driver's pid in meta."""
        handle = open(_lock_path(self.path), "a+")  # noqa: SIM115 (held for the whole block)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = self.meta().get("driver_pid")
                raise JournalError(f"{self.path.parent.name}: already running (driver pid "
                                   f"{pid}); wait for it, or cancel it") from None
            self.set_meta("driver_pid", os.getpid())
            try:
                yield
            finally:
                self.set_meta("driver_pid", None)
        finally:
            handle.close()

    def driver_alive(self) -> bool:
        """Whether a driver holds this journal's lease now."""
        return driver_alive(self.path)

    @classmethod
    def open(cls, path: Path) -> Journal:
        if not path.is_file():
            raise JournalError(f"{path}: no such batch journal")
        try:
            return cls(path, _connect(path))
        except sqlite3.DatabaseError as error:
            raise JournalError(f"{path}: not a batch journal ({error})") from None

    def close(self) -> None:
        """Commit what waits (`commit=False`), then close: closing alone would drop it."""
        self.commit()
        self.db.close()

    # -- meta ----------------------------------------------------------------------------------

    def meta(self) -> dict[str, object]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: object) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # -- executions ----------------------------------------------------------------------------

    def add(self, points: Iterable[tuple], chunk: int = 5000) -> int:
        """Insert (uuid, argv, label[, payload]) rows in order, in chunks: bounded memory for
        any size."""
        insert = "INSERT INTO executions (uuid, argv, label, payload) VALUES (?, ?, ?, ?)"
        total = 0
        batch: list[tuple[str, str, str, str]] = []
        last: tuple = (None, "")  # repeats (`-x N`) share their arguments: encoded once
        with self.db:
            for uuid, argv, label, *payload in points:
                if argv != last[0]:
                    last = (argv, json.dumps(list(argv)))
                batch.append((uuid, last[1], label,
                              json.dumps(payload[0]) if payload and payload[0] else "{}"))
                if len(batch) >= chunk:
                    self.db.executemany(insert, batch)
                    total += len(batch)
                    batch.clear()
            self.db.executemany(insert, batch)
        return total + len(batch)

    def pending(self, after: int = 0, limit: int = 1000) -> list[Row]:
        """Queued rows in sweep order, after `seq`; the driver pages through them."""
        return self._rows("WHERE state = 'queued' AND seq > ? ORDER BY seq LIMIT ?",
                          (after, limit))

    def in_flight(self) -> list[Row]:
        """Rows that were submitted or running when the driver stopped."""
        return self._rows("WHERE state IN (?, ?) ORDER BY seq", IN_FLIGHT)

    def unrecorded(self) -> list[Row]:
        """Rows that reached a final state whose recording by the tool was interrupted."""
        return self._rows("WHERE recorded = 0 ORDER BY seq", ())

    def get(self, seq: int) -> Row:
        rows = self._rows("WHERE seq = ?", (seq,))
        if not rows:
            raise JournalError(f"{self.path}: no execution #{seq}")
        return rows[0]

    def rows(self, state: str | None = None, limit: int = 1_000_000) -> list[Row]:
        if state is None:
            return self._rows("ORDER BY seq LIMIT ?", (limit,))
        return self._rows("WHERE state = ? ORDER BY seq LIMIT ?", (state, limit))

    def leftovers(self, states: Iterable[str]) -> list[Row]:
        """Rows in `states` whose last run was placed on a node and reported no exit code:
        its processes or run folder may linger. Chosen by SQLite, not by decoding every
        queued row (a 100,000-row batch resumed half a second later for that)."""
        states = list(states)
        marks = ",".join("?" * len(states))
        return self._rows(f"WHERE state IN ({marks}) AND COALESCE(run, '') != '' AND "
                          "COALESCE(node, '') != '' AND ecode IS NULL ORDER BY seq", tuple(states))

    def _rows(self, where: str, args: tuple) -> list[Row]:
        query = f"SELECT {_COLUMNS} FROM executions {where}"
        return [_row(r) for r in self.db.execute(query, args)]

    def commit(self) -> None:
        """Commit the writes made with `commit=False` (nothing when there are none)."""
        if self.db.in_transaction:
            self.db.commit()

    def started(self, seq: int, run: str, commit: bool = True) -> None:
        """Handed to the engine as run `run`. A driver need not commit it: it commits before
        the run can start anywhere (with `placed`, or at the engine's barrier)."""
        self.db.execute("UPDATE executions SET state = ?, run = ?, started = ?, "
                        "node = NULL, slot = NULL, allocation = NULL, "
                        "attempts = attempts + 1 WHERE seq = ?",
                        (State.SUBMITTED.value, run, time.time(), seq))
        if commit:
            self.db.commit()

    def placed(self, seq: int, node: str, slot: str, allocation: str | None = None,
               digest: str | None = None, commit: bool = True) -> None:
        """Placed on `node`. A driver that does not commit it commits before the run's order
        leaves for the node (the engine's barrier)."""
        self.db.execute("UPDATE executions SET state = ?, node = ?, slot = ?, allocation = ?, "
                        "digest = COALESCE(?, digest) WHERE seq = ?",
                        (State.RUNNING.value, node, slot, allocation, digest, seq))
        if commit:
            self.db.commit()

    def finished(self, seq: int, state: str, ecode: int | None, message: str = "",
                 lost: bool = False, recorded: bool = True, value: float | None = None,
                 commit: bool = True) -> Row:
        """The current run ended; returns the row as it is now. A driver that does not commit
        it commits before the run's folder is removed (the engine's barrier): until then a
        resume finds the run folder and recovers it."""
        rows = self.db.execute(
            "UPDATE executions SET state = ?, ecode = ?, message = ?, finished = ?, "
            f"lost = lost + ?, recorded = ?, value = ? WHERE seq = ? RETURNING {_COLUMNS}",
            (state, ecode, message, time.time(), int(lost), int(recorded), value,
             seq)).fetchall()
        if commit:
            self.db.commit()
        if not rows:
            raise JournalError(f"{self.path}: no execution #{seq}")
        return _row(rows[0])

    def recorded(self, seq: int, value: float | None = None, commit: bool = True) -> None:
        """The tool recorded the final result of `seq` (and its objective value, if any). Not
        committed, it is lost only to a crash, and the result is recorded again on resume."""
        self.db.execute("UPDATE executions SET recorded = 1, value = ? WHERE seq = ?",
                        (value, seq))
        if commit:
            self.db.commit()

    def update_payload(self, seq: int, payload: dict, commit: bool = True) -> None:
        self.db.execute("UPDATE executions SET payload = ? WHERE seq = ?",
                        (json.dumps(payload), seq))
        if commit:
            self.db.commit()

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


def _row(r: tuple) -> Row:
    return Row(r[0], r[1], tuple(json.loads(r[2])), *r[3:12], json.loads(r[12] or "{}"), *r[13:])


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    _upgrade(db)
    return db


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a journal written by an earlier version to this schema, in one transaction."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    version = json.loads(row[0]) if row else 1
    if version > VERSION:
        raise sqlite3.DatabaseError(f"written by a newer version (schema {version}; this one "
                                    f"reads up to {VERSION})")
    if version == VERSION:
        return
    have = {r[1] for r in db.execute("PRAGMA table_info(executions)")}
    with db:
        for name, kind in COLUMNS_V2:
            if name not in have:
                db.execute(f"ALTER TABLE executions ADD COLUMN {name} {kind}")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (json.dumps(VERSION),))


def default_name(stem: str) -> str:
    """A name for an unnamed run: the script, the time, and a random tag (two runs started in
    the same second must not share a folder)."""
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuidlib.uuid4().hex[:4]}"


def iter_chunks(journal: Journal, size: int = 1000) -> Iterator[Row]:
    """Every queued row in order, a page at a time."""
    after = 0
    while True:
        page = journal.pending(after, size)
        if not page:
            return
        yield from page
        after = page[-1].seq


def _lock_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


def driver_alive(journal: Path) -> bool:
    """Whether a driver holds the lease of the journal at `journal` (it runs now)."""
    lock = _lock_path(journal)
    if not lock.exists():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
