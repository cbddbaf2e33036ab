"""What the pages show of a journal: its summary, one page of its executions (filtered and sorted
by SQLite, so a 100,000-row journal costs one indexed query, not a load), one execution.

Journals are opened with liborchestra's `Journal.open` and read through its connection, the way
parasearch.trials reads a search; the queries that Journal has no method for yet (a filtered,
sorted page with times) live here only.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import attrs

from liborchestra.journal import Journal, JournalError

PAGE_SIZE = 50
STATES = ("queued", "submitted", "running", "completed", "failed", "lost", "cancelled")
SORTS = {"seq": "seq", "state": "state", "label": "label", "node": "node", "ecode": "ecode",
         "started": "started", "finished": "finished", "value": "value",
         "duration": "(finished - started)", "attempts": "attempts"}


class NotFound(LookupError):
    """What the URL names is not there (answered 404)."""


class BadRequest(ValueError):
    """The query cannot be answered as asked (answered 400)."""


class Forbidden(PermissionError):
    """A state change without this server's CSRF token (answered 403)."""


class Conflict(RuntimeError):
    """The action does not fit the record's state now, e.g. retry while running (409)."""


@attrs.frozen
class Summary:
    name: str
    kind: str
    counts: dict[str, int]
    total: int
    alive: bool  # a driver holds the journal's lease now
    meta: dict


@attrs.frozen
class Query:
    """A page request: filters, sort and page number, checked."""

    state: str = ""
    text: str = ""  # a substring of the arguments (the parameters)
    commit: str = ""  # a prefix of the code digest
    sort: str = "seq"
    desc: bool = False
    page: int = 1

    @classmethod
    def parse(cls, params: dict[str, str], sorts: dict[str, str] = SORTS,
              default: str = "seq") -> Query:
        state, sort = params.get("state", ""), params.get("sort", default) or default
        if state and state not in STATES:
            raise BadRequest(f"unknown state {state!r}")
        if sort not in sorts:
            raise BadRequest(f"cannot sort by {sort!r}")
        try:
            page = int(params.get("page", "1") or "1")
        except ValueError:
            raise BadRequest("the page number must be a whole number") from None
        if page < 1:
            raise BadRequest("the page number starts at 1")
        return cls(state, params.get("q", "").strip(), params.get("commit", "").strip(), sort,
                   params.get("desc", "") in ("1", "true", "on"), page)


@attrs.frozen
class Execution:
    """One row with the columns a page shows (times included, which journal.Row lacks)."""

    seq: int
    uuid: str
    argv: tuple[str, ...]
    label: str
    state: str
    attempts: int
    node: str | None
    slot: str | None
    allocation: str | None
    digest: str | None
    ecode: int | None
    value: float | None
    started: float | None
    finished: float | None
    message: str
    payload: dict

    @property
    def duration(self) -> float | None:
        if self.started and self.finished and self.finished >= self.started:
            return self.finished - self.started
        return None


_COLUMNS = ("seq, uuid, argv, label, state, attempts, node, slot, allocation, digest, ecode, "
            "value, started, finished, message, payload")


def _execution(r: tuple) -> Execution:
    return Execution(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4], r[5], r[6], r[7], r[8],
                     r[9], r[10], r[11], r[12], r[13], r[14] or "", json.loads(r[15] or "{}"))


@contextlib.contextmanager
def opened(path: Path | None) -> Iterator[Journal]:
    """The journal at `path`, closed after use (a missing or broken file is NotFound; None:
    no journal here, as for a search whose driver ran on another machine)."""
    if path is None:
        raise NotFound("no driver ran here: its executions are in another folder")
    try:
        journal = Journal.open(path)
    except JournalError as error:
        raise NotFound(str(error)) from None
    try:
        yield journal
    finally:
        journal.close()


def summary(journal: Journal, kind: str) -> Summary:
    meta = journal.meta()
    counts = journal.counts()
    return Summary(str(meta.get("name") or journal.path.parent.name), kind, counts,
                   sum(counts.values()), journal.driver_alive(), meta)


def page(db: sqlite3.Connection, query: Query, size: int = PAGE_SIZE,
         sorts: dict[str, str] = SORTS) -> tuple[list[Execution], int]:
    """The executions of one page of a table shaped like a journal's (a journal's own, or a
    campaign's index) and how many match the filters in all."""
    where, args = [], []
    if query.state:
        where.append("state = ?")
        args.append(query.state)
    if query.text:
        where.append("(label LIKE ? ESCAPE '\\' OR argv LIKE ? ESCAPE '\\')")
        pattern = "%" + query.text.replace("\\", "\\\\").replace("%", "\\%")\
            .replace("_", "\\_") + "%"
        args += [pattern, pattern]
    if query.commit:
        where.append("digest LIKE ? ESCAPE '\\'")
        args.append(query.commit.replace("\\", "\\\\").replace("%", "\\%")
                    .replace("_", "\\_") + "%")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    total = db.execute(f"SELECT COUNT(*) FROM executions {clause}", args).fetchone()[0]
    order = f"{sorts[query.sort]} {'DESC' if query.desc else 'ASC'}, seq"
    # the matching rows found first, then walked in the sort's order: an index on the sort
    # column is then probed against them instead of each row being looked up (100,000 rows,
    # sorted by an indexed column, filtered to 11: 225 -> 58 ms)
    where_seq = f"WHERE seq IN (SELECT seq FROM executions {clause})" if clause else ""
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM executions {where_seq} ORDER BY {order} LIMIT ? OFFSET ?",
        [*args, size, (query.page - 1) * size]).fetchall()
    return [_execution(r) for r in rows], total


def execution(journal: Journal, seq: int) -> Execution:
    row = journal.db.execute(f"SELECT {_COLUMNS} FROM executions WHERE seq = ?",
                             (seq,)).fetchone()
    if row is None:
        raise NotFound(f"no execution #{seq}")
    return _execution(row)


def execution_of(seq: int, columns: tuple) -> Execution:
    """An Execution from the columns after `seq` (a campaign record's, made by campaigns)."""
    return _execution((seq, *columns))


def by_uuid(db: sqlite3.Connection, uuid: str) -> Execution | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM executions WHERE uuid = ?", (uuid,)).fetchone()
    return None if row is None else _execution(row)


def last_change(journal: Journal) -> tuple:
    """A cheap fingerprint of the journal's progress, for the live views to tell "changed"."""
    return tuple(journal.db.execute(
        "SELECT COUNT(*), MAX(finished), MAX(started), SUM(state = 'completed') "
        "FROM executions").fetchone()) + tuple(sorted(journal.counts().items()))
