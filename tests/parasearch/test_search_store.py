"""Many drivers of one search through the shared store: PostgreSQL on the bed, SQLite on one
machine; leases and take-over; store errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.helpers import local_profile, ssh_options, write_profile, write_script
from tests.parasearch.test_search_cli import parasearch

# logs "<parameters> <hostname>" when it starts; the objective is x² + y
SCRIPT = """\
#!/usr/bin/env bash
for a in "$@"; do case $a in --x=*) x=${a#--x=};; --y=*) y=${a#--y=};; esac; done
echo "$x,$y $(hostname) $$" >> "$LOG"
sleep "${SLEEP:-0.2}"
v=$(python3 -c "import sys; print(float(sys.argv[1])**2 + float(sys.argv[2]))" "$x" "$y")
echo "RUNAWAY_FEATURES: $v"
"""
PRIORS = ["--", "--x~uniform(-2, 2)", "--y~uniform(0, 1)"]


def driver(name: str, profile: Path, script: Path, cwd: Path, storage: str, *extra: str,
           env: dict | None = None) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "parasearch", "--name", name, "--storage", storage, "--json",
         *extra, str(profile), str(script), *PRIORS], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def stored(url: str, name: str) -> list[tuple]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as db:
            return db.execute(sa.text(
                "SELECT number, state, driver, takeovers, params FROM trials "
                "WHERE search = :s ORDER BY number"), {"s": name}).fetchall()
    finally:
        engine.dispose()


def shared_log(testbed, tmp: Path) -> Path:
    """A log on the shared home, writable by the bed's user (the runs on the clusters)."""
    log = Path(f"/home/{testbed.user}/.orchestra-tests/search-{uuid.uuid4().hex[:8]}")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    os.chmod(log, 0o666)
    return log


def test_two_drivers_on_slurm_and_sge_share_one_search_on_postgresql(testbed, tmp_path):
    name = f"two-{uuid.uuid4().hex[:8]}"
    log = shared_log(testbed, tmp_path)
    script = write_script(tmp_path / "code", "f.sh", SCRIPT.replace('"$LOG"', str(log)))
    remote = f"~/.orchestra-tests/{uuid.uuid4().hex}"
    slurm = write_profile(tmp_path / "profiles", "slurm", {
        "ssh": ssh_options(testbed, host="login"), "directory": remote,
        "scheduler": {"kind": "slurm", "nodes": 1, "walltime": "10m"}})
    sge = write_profile(tmp_path / "profiles", "sge", {
        "ssh": ssh_options(testbed, host="login"), "directory": remote,
        "scheduler": {"kind": "sge", "nodes": 1, "walltime": "10m"}})
    one = driver(name, slurm, script, tmp_path / "a", testbed.postgres, "--n", "30",
                 "--algo", "tpe")
    two = driver(name, sge, script, tmp_path / "b", testbed.postgres, "--n", "30",
                 "--algo", "tpe")
    codes = [one.wait(300), two.wait(300)]
    errors = one.stderr.read() + two.stderr.read()
    assert codes == [0, 0], errors
    rows = stored(testbed.postgres, name)
    assert [r[1] for r in rows].count("completed") >= 30
    assert all(r[1] in ("completed", "reserved") for r in rows), rows
    drivers = {r[2] for r in rows if r[1] == "completed"}
    assert len(drivers) == 2, drivers  # both did work
    ran = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(ran) == len(set(ran))  # no parameters ran twice
    assert len(ran) == len(rows)


def test_the_other_driver_takes_over_the_trials_of_a_dead_one(testbed, tmp_path):
    name = f"take-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "log.txt"
    script = write_script(tmp_path / "code", "f.sh", SCRIPT)
    env = {"LOG": str(log), "SLEEP": "1"}
    profile = local_profile(tmp_path, slots=2)
    doomed = driver(name, profile, script, tmp_path / "a", testbed.postgres, "--n", "6",
                    "--lease", "4", env=env)
    deadline = time.monotonic() + 60
    while not log.exists() or len(log.read_text().splitlines()) < 2:
        assert time.monotonic() < deadline, doomed.stderr.read() if doomed.poll() else "slow"
        time.sleep(0.1)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    held = {r[0] for r in stored(testbed.postgres, name) if r[1] == "reserved"}
    assert held
    survivor = driver(name, profile, script, tmp_path / "b", testbed.postgres, "--n", "6",
                      "--lease", "4", env=env)
    assert survivor.wait(300) == 0, survivor.stderr.read()
    rows = stored(testbed.postgres, name)
    assert [r[1] for r in rows].count("completed") == 6
    taken = {r[0] for r in rows if r[3] > 0}
    assert taken == held  # exactly the dead driver's trials, once their lease expired
    dead = json.loads(sqlite3.connect(tmp_path / "a/search" / name / "journal.sqlite").execute(
        "SELECT value FROM meta WHERE key = 'driver_id'").fetchone()[0])
    assert {r[2] for r in rows if r[0] in held} == {r[2] for r in rows} - {dead}
    assert all(r[1] == "completed" for r in rows if r[0] in held)


def test_two_drivers_on_one_machine_share_a_sqlite_store(tmp_path):
    name = "shared"
    store = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    log = tmp_path / "log.txt"
    script = write_script(tmp_path / "code", "f.sh", SCRIPT)
    profile = local_profile(tmp_path, slots=2)
    procs = [driver(name, profile, script, tmp_path / d, store, "--n", "16",
                    env={"LOG": str(log)}) for d in ("a", "b")]
    assert [p.wait(300) for p in procs] == [0, 0], "".join(p.stderr.read() for p in procs)
    rows = stored(store, name)
    assert [r[1] for r in rows].count("completed") >= 16
    assert len({r[2] for r in rows}) == 2
    ran = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(ran) == len(set(ran)) == len(rows)


def test_an_unreachable_store_or_a_wrong_password_is_one_clear_error(testbed, tmp_path):
    script = write_script(tmp_path / "code", "f.sh", SCRIPT)
    wrong = testbed.postgres.replace(":orchestra-tests@", ":wrong@")
    for url, words in ((wrong, ["password authentication failed", "***"]),
                       ("postgresql://orchestra@127.0.0.1:1/searches", ["127.0.0.1"])):
        done = parasearch("--name", "x", "--storage", url, local_profile(tmp_path), script,
                          *PRIORS, cwd=tmp_path)
        assert done.returncode == 3, done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, done.stderr
        assert all(w in errors[0] for w in words), errors[0]
        assert "wrong" not in errors[0]  # the password is not shown
    assert not (tmp_path / "search").exists()


RACE = """\
import sys
from parasearch.store import Store
store = Store(sys.argv[1], "race")
joined = not store.create({"n": 1})
print("joined" if joined else "created")
"""


def test_drivers_starting_together_on_a_new_database_create_it_once(testbed, tmp_path):
    """Several drivers at the same moment on an empty database: the schema and the search
    are created once, the others join (found by the CI of this very change)."""
    admin = sa.create_engine(testbed.postgres.replace("postgresql://", "postgresql+psycopg://"),
                             isolation_level="AUTOCOMMIT")
    database = f"race_{uuid.uuid4().hex[:8]}"
    with admin.connect() as db:
        db.execute(sa.text(f"CREATE DATABASE {database}"))
    url = testbed.postgres.rsplit("/", 1)[0] + "/" + database
    try:
        script = tmp_path / "race.py"
        script.write_text(RACE)
        procs = [subprocess.Popen([sys.executable, str(script), url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
        assert sorted(out.strip() for out, _ in outs) == ["created"] + ["joined"] * 3
    finally:
        with admin.connect() as db:
            db.execute(sa.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()


def test_a_result_is_stored_with_what_changed_since_in_one_transaction(tmp_path):
    """`Store.record` (what a driver does when a trial ends) returns the other drivers' new
    trials and results; results are numbered in the order they arrive; SQLite runs in WAL."""
    from parasearch.store import COMPLETED, FAILED, Store

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    one, two = Store(url, "s"), Store(url, "s")
    try:
        assert one.create({"n": 3}) and not two.create({"n": 3})
        with one.asking() as db:
            one.reserve(db, 0, {"x": 0.5}, 0, "one", 60.0, "run-0")
        with two.asking() as db:
            two.reserve(db, 1, {"x": 0.7}, 0, "two", 60.0, "run-1")
        assert one.record(0, "one", COMPLETED, 1.5, {}, "", "node", 1.0)[0]
        kept, news = two.record(1, "two", FAILED, None, {}, "exit 1", "node", 1.0,
                                since_number=2, told_since=0)
        assert kept
        assert [(t.number, t.state, t.told, t.value) for t in news] == [
            (0, COMPLETED, 0, 1.5), (1, FAILED, 1, None)]
        assert not one.finish(1, "one", COMPLETED, 2.0, {}, "", "node", 1.0)  # not one's
        assert [t.told for t in one.trials()] == [0, 1]
        with one.engine.connect() as db:
            assert db.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        one.close()
        two.close()
