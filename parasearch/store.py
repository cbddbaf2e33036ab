"""The search store: the one record a search's drivers share, SQLite on one machine or
PostgreSQL across machines, through one code path (SQLAlchemy Core; psycopg 3 for PostgreSQL).

Oríon's "no master": every driver of a search decides from the whole shared history and
writes only in transactions. Asking is serialized by a lock on the search's row (a row lock in
PostgreSQL, the write lock in SQLite), so two drivers never propose the same trial. A trial is
reserved by one driver under a lease that its heartbeat keeps alive; a lease that expires (the
driver died) lets another driver — or the same one resumed — take the trial over. A result is
stored only by the driver that holds the trial: a run that was taken over cannot complete it a
second time. Each trial keeps how many results were known when it was asked (`asked_after`)
and the order its own result arrived (`told`), so a sampler replays the history exactly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from liborchestra.errors import OrchestraError

RESERVED, COMPLETED, FAILED, LOST = "reserved", "completed", "failed", "lost"
SCHEMA_VERSION = 1

_meta = sa.MetaData()
searches = sa.Table(
    "searches", _meta,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("meta", sa.Text, nullable=False),
    sa.Column("asks", sa.Integer, nullable=False, default=0),  # the row the ask lock takes
    sa.Column("created", sa.Float, nullable=False),
)
trials = sa.Table(
    "trials", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("search", sa.String(200), sa.ForeignKey("searches.name"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),  # the sampler's trial id
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("metrics", sa.Text, nullable=False, default="{}"),
    sa.Column("asked_after", sa.Integer, nullable=False),
    sa.Column("told", sa.Integer),
    sa.Column("driver", sa.String(100), nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("run", sa.String(100)),  # the uuid of the run folder that holds its results
    sa.Column("node", sa.String(200)),
    sa.Column("started", sa.Float),
    sa.Column("finished", sa.Float),
    sa.Column("takeovers", sa.Integer, nullable=False, default=0),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.UniqueConstraint("search", "number"),
)
sa.Index("trials_by_state", trials.c.search, trials.c.state)
sa.Index("trials_by_told", trials.c.search, trials.c.told)


class StoreError(OrchestraError):
    """The store cannot be reached or used (one line: which store, what failed)."""


@attrs.frozen
class StoredTrial:
    number: int
    params: dict
    state: str
    value: float | None
    metrics: dict
    asked_after: int
    told: int | None
    driver: str
    lease_until: float | None
    run: str | None
    node: str | None
    started: float | None
    finished: float | None
    message: str


def store_url(storage: str | None, folder: Path) -> str:
    """The SQLAlchemy URL of `--storage` (default: SQLite in the search folder)."""
    if storage is None:
        return f"sqlite:///{folder / 'search.sqlite'}"
    if storage.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + storage.split("://", 1)[1]
    if storage.startswith(("sqlite:///", "postgresql+psycopg://")):
        return storage
    raise StoreError(f"--storage {storage}: expected postgresql://USER@HOST/DB or "
                     "sqlite:///PATH")


def shown(url: str) -> str:
    """A URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


class Store:
    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url, connect_args={"timeout": 60})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True,
                                           connect_args={"connect_timeout": 10})
        try:
            self._create_schema()
        except sa.exc.SQLAlchemyError as error:
            raise StoreError(f"search store {shown(url)}: {_reason(error)}") from None

    def _create_schema(self) -> None:
        """The tables, once, even when several drivers start at the same moment on a new
        database: PostgreSQL serializes on an advisory lock; and whoever loses a race to
        create a table finds it made on the next try."""
        for attempt in range(3):
            try:
                with self.engine.begin() as db:
                    if db.dialect.name == "postgresql":
                        db.execute(sa.text("SELECT pg_advisory_xact_lock(7061726173)"))
                    _meta.create_all(db, checkfirst=True)
                return
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as db:
                yield db
        except sa.exc.OperationalError as error:
            raise StoreError(f"search store {shown(self.url)}: {_reason(error)}") from None

    # -- the search ------------------------------------------------------------------------------

    def create(self, meta: dict) -> bool:
        """Create the search; False when another driver created it first (then join it)."""
        try:
            with self._tx() as db:
                db.execute(searches.insert().values(name=self.name, meta=json.dumps(meta),
                                                    asks=0, created=time.time()))
        except sa.exc.IntegrityError:
            return False
        return True

    def exists(self) -> bool:
        with self._tx() as db:
            return db.execute(sa.select(searches.c.name).where(
                searches.c.name == self.name)).first() is not None

    def meta(self) -> dict:
        with self._tx() as db:
            row = db.execute(sa.select(searches.c.meta).where(
                searches.c.name == self.name)).first()
        if row is None:
            raise StoreError(f"no search named {self.name!r} in {shown(self.url)}")
        return json.loads(row[0])

    # -- trials ----------------------------------------------------------------------------------

    @contextmanager
    def asking(self) -> Iterator[Connection]:
        """A transaction holding the search's ask lock: no other driver asks meanwhile."""
        with self._tx() as db:
            db.execute(_ASK, {"s": self.name})
            yield db

    def trials(self, db: Connection | None = None, since_number: int = 0,
               told_since: int | None = None) -> list[StoredTrial]:
        """The trials from number `since_number` on; with `told_since`, also those whose
        result arrived since (what a driver that knows the rest needs to catch up)."""
        query, values = _NEWS, {"s": self.name, "since": since_number,
                                "told": -1 if told_since is None else told_since}
        if told_since is None:
            query = _SINCE
        if db is not None:
            return [_trial(r) for r in db.execute(query, values)]
        with self._tx() as conn:
            return [_trial(r) for r in conn.execute(query, values)]

    def reserve(self, db: Connection, number: int, params: dict, asked_after: int,
                driver: str, lease: float, run: str) -> None:
        db.execute(_RESERVE, {
            "search": self.name, "number": number, "params": json.dumps(params),
            "state": RESERVED, "asked_after": asked_after, "driver": driver,
            "lease_until": time.time() + lease, "run": run, "metrics": "{}", "takeovers": 0,
            "message": ""})

    def take_over(self, db: Connection, driver: str, lease: float) -> list[StoredTrial]:
        """Reserve for `driver` the trials whose lease expired (their driver died or stopped);
        its own are not taken: its journal recovers them."""
        now = time.time()
        numbers = [r[0] for r in db.execute(_EXPIRED, {"s": self.name, "now": now,
                                                       "holder": driver})]
        if not numbers:
            return []
        expired = sa.and_(trials.c.search == self.name, trials.c.state == RESERVED,
                          trials.c.lease_until < now, trials.c.driver != driver)
        db.execute(trials.update().where(expired, trials.c.number.in_(numbers)).values(
            driver=driver, lease_until=now + lease, takeovers=trials.c.takeovers + 1))
        return [t for t in self.trials(db) if t.number in set(numbers)]

    def renew(self, number: int, driver: str, lease: float, run: str) -> bool:
        """Keep a trial reserved for `driver`, now run as `run`; False when it is no longer
        `driver`'s (taken over, or finished by another)."""
        with self._tx() as db:
            return db.execute(trials.update().where(
                trials.c.search == self.name, trials.c.number == number,
                trials.c.driver == driver, trials.c.state == RESERVED).values(
                run=run, lease_until=time.time() + lease)).rowcount == 1

    def heartbeat(self, driver: str, lease: float) -> int:
        """Keep the leases of `driver`'s trials alive; how many it holds."""
        with self._tx() as db:
            return db.execute(trials.update().where(
                trials.c.search == self.name, trials.c.driver == driver,
                trials.c.state == RESERVED).values(lease_until=time.time() + lease)).rowcount

    def finish(self, number: int, driver: str, state: str, value: float | None,
               metrics: dict, message: str, node: str | None, started: float | None) -> bool:
        """Store a result, in the order results arrive; False when `driver` no longer holds
        the trial (it was taken over: this result is ignored)."""
        return self.record(number, driver, state, value, metrics, message, node, started)[0]

    def record(self, number: int, driver: str, state: str, value: float | None,
               metrics: dict, message: str, node: str | None, started: float | None,
               since_number: int | None = None,
               told_since: int | None = None) -> tuple[bool, list[StoredTrial]]:
        """`finish`, and with `since_number` what changed since (as `trials`), read in the
        same transaction: one round trip per result for a driver that keeps up."""
        with self.asking() as db:
            told = db.execute(_TOLD, {"s": self.name}).scalar_one()
            done = db.execute(_FINISH, {
                "s": self.name, "n": number, "holder": driver, "new_state": state,
                "new_value": value, "new_metrics": json.dumps(metrics),
                "new_message": message, "new_node": node, "new_started": started,
                "new_finished": time.time(), "new_told": told})
            news = [] if since_number is None else self.trials(db, since_number, told_since)
            return done.rowcount == 1, news

    def release(self, driver: str) -> None:
        """Let other drivers take this driver's reserved trials at once (it stops cleanly
        with trials it did not run: drained before they started)."""
        with self._tx() as db:
            db.execute(trials.update().where(
                trials.c.search == self.name, trials.c.driver == driver,
                trials.c.state == RESERVED).values(lease_until=0.0))

    def counts(self) -> dict[str, int]:
        with self._tx() as db:
            rows = db.execute(sa.select(trials.c.state, sa.func.count()).where(
                trials.c.search == self.name).group_by(trials.c.state))
            return {state: n for state, n in rows}


_COLUMNS = (trials.c.number, trials.c.params, trials.c.state, trials.c.value, trials.c.metrics,
            trials.c.asked_after, trials.c.told, trials.c.driver, trials.c.lease_until,
            trials.c.run, trials.c.node, trials.c.started, trials.c.finished, trials.c.message)


# The statements of the per-trial path, built once (their SQL is compiled once per dialect).
_S = sa.bindparam("s")
_ASK = searches.update().where(searches.c.name == _S).values(asks=searches.c.asks + 1)
_SINCE = sa.select(*_COLUMNS).where(
    trials.c.search == _S, trials.c.number >= sa.bindparam("since")).order_by(trials.c.number)
_NEWS = sa.select(*_COLUMNS).where(trials.c.search == _S, sa.or_(
    trials.c.number >= sa.bindparam("since"), trials.c.told >= sa.bindparam("told"))
).order_by(trials.c.number)
_RESERVE = trials.insert()
_EXPIRED = sa.select(trials.c.number).where(
    trials.c.search == _S, trials.c.state == RESERVED,
    trials.c.lease_until < sa.bindparam("now"), trials.c.driver != sa.bindparam("holder"))
# results are numbered 0, 1, 2... under the ask lock: the next is the highest + 1 (an index
# lookup, where counting them would read them all)
_TOLD = sa.select(sa.func.coalesce(sa.func.max(trials.c.told), -1) + 1).where(
    trials.c.search == _S)
_FINISH = trials.update().where(
    trials.c.search == _S, trials.c.number == sa.bindparam("n"),
    trials.c.driver == sa.bindparam("holder"), trials.c.state == RESERVED).values(
    lease_until=None, **{c: sa.bindparam(f"new_{c}") for c in (
        "state", "value", "metrics", "message", "node", "started", "finished", "told")})


def _sqlite_pragmas(connection, _record) -> None:
    """Write-ahead logging: readers never block the writer, and a commit appends to the log
    instead of rewriting the database through a rollback journal; synchronous=NORMAL syncs
    at checkpoints, not at every commit — a killed driver loses nothing it committed (only
    a power cut can lose the last commits, never consistency). SQLite on one machine, as
    the store has always been (WAL needs shared memory: not over NFS)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _trial(row) -> StoredTrial:
    return StoredTrial(row[0], json.loads(row[1]), row[2], row[3], json.loads(row[4] or "{}"),
                       *row[5:13], row[13] or "")


def _reason(error: sa.exc.SQLAlchemyError) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0] if text else type(error).__name__
