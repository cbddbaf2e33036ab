"""The driver loop and the engine beneath it, in-process, on a local profile."""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import anyio
import pytest

from liborchestra import Engine, Execution, State
from liborchestra.driver import Driver, Policy, Source, Work
from liborchestra.journal import Journal, JournalError, driver_alive
from tests.helpers import load, local_profile, write_script


def run(coro):
    return anyio.run(lambda: coro, backend="asyncio")


def drive(profile, journal: Journal, source: Source) -> dict[str, int]:
    """Drive `source` to its end on `profile`, as a tool does; the journal's counts."""
    async def main():
        async with Engine(profile) as engine:
            with journal.lease():
                return await Driver(engine, journal, source).run()

    return run(main())


def test_join_wakes_every_waiter(tmp_path):
    profile = load(local_profile(tmp_path))
    script = write_script(tmp_path / "code", "job.sh", "sleep 1\n")
    woke = []

    async def main():
        async with Engine(profile) as engine:
            engine.submit(Execution(script))

            async def waiter(name):
                await engine.join()
                woke.append(name)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter, "first")
                    tg.start_soon(waiter, "second")

    run(main())
    assert sorted(woke) == ["first", "second"]


def test_an_unexpected_error_fails_that_execution_only(tmp_path, monkeypatch):
    profile = load(local_profile(tmp_path))
    script = write_script(tmp_path / "code", "job.sh", "echo $1\n")

    async def main():
        async with Engine(profile) as engine:
            store = engine.launcher._store

            def full_disk(shell, execution, sink):
                if execution.args == ("2",):
                    raise OSError(errno.ENOSPC, "No space left on device")
                return store(shell, execution, sink)

            monkeypatch.setattr(engine.launcher, "_store", full_disk)
            futures = [engine.submit(Execution(script, [str(i)], output=tmp_path / f"o{i}"))
                       for i in range(5)]
            return [await f for f in futures]

    results = run(main())
    assert [r.state for r in results] == [State.COMPLETED] * 2 + [State.FAILED] + \
        [State.COMPLETED] * 2
    assert "No space left on device" in results[2].message
    assert results[2].ecode is None


class Numbers(Source):
    """n executions of `echo K`, decided a few at a time; records what `done` saw."""

    def __init__(self, script: Path, out: Path, n: int) -> None:
        self.script, self.out, self.left = script, out, list(range(n))
        self.seen: list[tuple[str, str]] = []

    async def next(self, n):
        if not self.left:
            return None
        take, self.left = self.left[:n], self.left[n:]
        return [Work((str(k),), f"k={k}", {"k": k}) for k in take]

    def execution(self, row, run_id):
        return Execution(self.script, row.argv, uuid=run_id, output=self.out / row.uuid)

    async def done(self, row, result):
        self.seen.append((row.payload["k"], result.state.value))
        return float(row.payload["k"])


def test_a_source_decides_and_records_through_the_journal(tmp_path):
    profile = load(local_profile(tmp_path))
    script = write_script(tmp_path / "code", "job.sh", '[ "$1" != 3 ]\n')
    journal = Journal.create(tmp_path / "out" / "journal.sqlite", {})
    source = Numbers(script, tmp_path / "out", 7)

    async def main():
        async with Engine(profile) as engine:
            with journal.lease():
                assert driver_alive(journal.path)
                return await Driver(engine, journal, source, Policy(retries=1)).run()

    counts = run(main())
    assert counts == {"completed": 6, "failed": 1}
    assert sorted(source.seen) == sorted((k, "failed" if k == 3 else "completed")
                                         for k in range(7))
    db = sqlite3.connect(journal.path)
    rows = db.execute("SELECT payload, state, attempts, value, recorded, digest, node "
                      "FROM executions ORDER BY seq").fetchall()
    assert [json.loads(r[0])["k"] for r in rows] == list(range(7))
    assert rows[3][1:3] == ("failed", 2)  # retried once
    assert [r[3] for r in rows] == [float(k) for k in range(7)]
    assert all(r[4] == 1 and len(r[5]) == 64 and r[6] for r in rows)
    assert not driver_alive(journal.path)


def test_the_lease_is_taken_once(tmp_path):
    journal = Journal.create(tmp_path / "b" / "journal.sqlite", {"name": "b"})
    other = Journal.open(journal.path)
    with journal.lease():
        with pytest.raises(JournalError, match="already running"):
            with other.lease():
                pass
    with other.lease():  # released with the block
        pass


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE executions (seq INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE, argv TEXT NOT NULL,
    label TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0, run TEXT, node TEXT, slot TEXT, ecode INTEGER, started REAL,
    finished REAL, message TEXT);
CREATE TABLE allocations (id TEXT PRIMARY KEY, state TEXT NOT NULL, granted REAL, released REAL,
    reason TEXT);
"""


def test_a_journal_of_the_first_version_is_upgraded_and_resumes(tmp_path):
    path = tmp_path / "old" / "journal.sqlite"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.executemany("INSERT INTO executions (uuid, argv, label, state) VALUES (?, ?, ?, ?)",
                   [("a", '["1"]', "1", "completed"), ("b", '["2"]', "2", "queued")])
    db.commit()
    db.close()
    journal = Journal.open(path)
    assert journal.meta()["schema"] == 2
    rows = journal.rows()
    assert [(r.uuid, r.state, r.payload) for r in rows] == [("a", "completed", {}),
                                                            ("b", "queued", {})]
    assert journal.unrecorded() == []  # old final rows count as recorded


@pytest.mark.parametrize("agent", [True, False], ids=["agent", "wrapper"])
def test_a_run_starts_only_once_its_placement_is_committed(tmp_path, agent):
    """Placements are committed in groups, at the engine's barrier: each script, started on
    the node, reads its own row from the journal in another process and finds it running
    (a crash from then on leaves a journal that knows where the run is)."""
    extra = {} if agent else {"agent": False}
    profile = load(local_profile(tmp_path, **extra))
    journal = Journal.create(tmp_path / "out" / "journal.sqlite", {})
    check = ("import sqlite3, os, sys\n"
             f"db = sqlite3.connect({str(journal.path)!r})\n"
             "row = db.execute('SELECT state, node FROM executions WHERE run = ?',\n"
             "                 (os.environ['RUNAWAY_UUID'],)).fetchone()\n"
             "sys.exit(0 if row and row[0] == 'running' and row[1] else 3)\n")
    script = write_script(tmp_path / "code", "job.sh", f"python3 - <<'EOF'\n{check}EOF\n")
    source = Numbers(script, tmp_path / "out", 12)

    assert drive(profile, journal, source) == {"completed": 12}


class SlowRecords(Numbers):
    """Numbers whose recording takes a while (a post-command, a git commit...)."""

    async def done(self, row, result):
        await anyio.sleep(0.3)
        return await super().done(row, result)


def test_recording_what_a_crash_left_does_not_recover_this_drivers_own_runs(tmp_path):
    """Resume records the earlier driver's unrecorded results while new work starts: the
    runs this driver starts meanwhile are in flight, and must not be taken for the earlier
    driver's (recovered, or started a second time)."""
    profile = load(local_profile(tmp_path))
    log = tmp_path / "ran.log"
    script = write_script(tmp_path / "code", "job.sh", f'sleep 0.5\necho "$1" >> {log}\n')
    journal = Journal.create(tmp_path / "out" / "journal.sqlite", {})
    journal.add((f"u{k}", (str(k),), f"k={k}", {"k": k}) for k in range(6))
    for seq in (1, 2):  # the earlier driver's: final, not recorded
        journal.started(seq, f"u{seq - 1}")
        journal.finished(seq, "completed", 0, recorded=False)
    source = SlowRecords(script, tmp_path / "out", 0)

    assert drive(profile, journal, source) == {"completed": 6}
    assert sorted(log.read_text().split()) == ["2", "3", "4", "5"]  # each once
    assert sorted(k for k, _ in source.seen) == list(range(6))  # each recorded once


def test_a_failure_of_the_engine_itself_reaches_the_caller(tmp_path, monkeypatch):
    """Executions run in the engine's own tasks: what `_execute` cannot turn into a Result
    (here its last step, broken) is raised to whoever waits, not lost with the task."""
    from liborchestra import engine as engine_module

    def broken(result, asked):
        raise RuntimeError("a broken engine")

    monkeypatch.setattr(engine_module, "_finished", broken)
    profile = load(local_profile(tmp_path))
    script = write_script(tmp_path / "code", "job.sh", "true\n")

    async def main():
        async with Engine(profile) as engine:
            with anyio.fail_after(30), pytest.raises(RuntimeError, match="a broken engine"):
                await engine.submit(Execution(script))

    run(main())


@pytest.mark.parametrize("agent", [True, False], ids=["agent", "wrapper"])
def test_a_run_folder_is_removed_only_once_its_final_state_is_committed(tmp_path, monkeypatch,
                                                                         agent):
    """Final states wait for a commit, but not past the removal of their run folders (the
    engine's barrier): a crash in between could recover them from nowhere. With commits
    otherwise put off for 30 s, a watcher sees each run folder go, and the journal (read
    from another connection) must hold that run's final state by then. The last runs end
    while one still runs, with nothing left to start, so only the barrier commits them."""
    import os
    import threading
    import time

    from liborchestra import driver as driver_module

    monkeypatch.setattr(driver_module, "COMMIT_DELAY", 30.0)
    profile = load(local_profile(tmp_path, **({} if agent else {"agent": False})))
    journal = Journal.create(tmp_path / "out" / "journal.sqlite", {})
    script = write_script(tmp_path / "code", "job.sh", 'sleep "$(( $1 * 4 ))e-1"\n')
    source = Numbers(script, tmp_path / "out", 7)
    runs, early, stop = tmp_path / "remote" / "runs", [], threading.Event()

    def watch():
        db, seen = sqlite3.connect(journal.path), set()
        while not stop.is_set():
            now = set(os.listdir(runs)) if runs.is_dir() else set()
            for gone in seen - now:
                row = db.execute("SELECT state FROM executions WHERE run = ?",
                                 (gone,)).fetchone()
                if row is None or row[0] != "completed":
                    early.append((gone, row))
            seen = now
            time.sleep(0.005)
        db.close()

    watcher = threading.Thread(target=watch)
    watcher.start()

    try:
        assert drive(profile, journal, source) == {"completed": 7}
    finally:
        stop.set()
        watcher.join()
    assert early == []
