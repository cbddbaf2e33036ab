"""Crashes: executions recovered on `--resume` after the driver was SIGKILLed mid-run keep
their times (the start journaled by the dead driver, the end when their results were
collected); results fetched but not committed when the driver died are recorded by the next
`sync` (and not twice by the resume); an unreachable remote is one clear error."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from conftest import assert_clean, assert_refused, expegit, git, records, two_clones
from test_expegit_run import _start, _uncommitted_records


def _states(campaign: Path, name: str) -> list[str]:
    path = campaign / ".git" / "expegit" / "journals" / name / "journal.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT state FROM executions ORDER BY seq")]
    except sqlite3.OperationalError:  # being created
        return []
    finally:
        db.close()


def _scripts_started(remote: Path) -> int:
    """Run folders whose script has started (the wrapper wrote its pid)."""
    return sum(1 for p in remote.glob("runs/*/.orchestra/pid") if p.stat().st_size)


def test_records_recovered_after_sigkill_have_start_end_and_duration(
        campaign: Path, local: str, tmp_path: Path):
    # 1 s ends while no driver is alive; 6 s still runs when the driver resumes
    launched = time.time()
    proc = _start(campaign, "run", local, "slow.sh", "--name", "k", "--json", "--", "{1;6}")
    deadline = time.monotonic() + 60
    while _states(campaign, "k") != ["running", "running"] \
            or _scripts_started(tmp_path / "remote") < 2:
        assert time.monotonic() < deadline and proc.poll() is None, _states(campaign, "k")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = time.time()
    time.sleep(2)  # the 1-second one ends meanwhile
    expegit("run", local, "slow.sh", "--resume", "--name", "k", cwd=campaign)
    resumed_end = time.time()
    recs = {r["arguments"][0]: r for r in records(campaign).values()}
    assert set(recs) == {"1", "6"}
    for sleep, rec in ((1, recs["1"]), (6, recs["6"])):
        assert rec["state"] == "completed" and rec["recovered"] is True, rec
        assert launched <= rec["submitted"] <= rec["started"] <= killed, rec
        assert rec["started"] < rec["ended"] <= resumed_end, rec
        assert abs(rec["duration"] - (rec["ended"] - rec["started"])) < 1e-6
        assert rec["duration"] >= sleep, rec
    # still running at resume: collected when it ended, so its duration is the real one
    assert recs["6"]["duration"] < 6 + 3, recs["6"]
    # ended while no driver was alive: the end is when the resumed driver fetched it
    assert recs["1"]["ended"] >= killed
    assert_clean(campaign)


def test_executions_this_driver_ran_are_not_marked_recovered(campaign: Path, local: str):
    expegit("run", local, "slow.sh", "--", "0.2", cwd=campaign)
    (rec,) = records(campaign).values()
    assert rec["recovered"] is False
    assert rec["submitted"] <= rec["started"] < rec["ended"]
    assert 0.2 <= rec["duration"] <= rec["ended"] - rec["started"] + 1


def test_sync_after_sigkill_mid_recording_records_what_was_fetched(
        tmp_path: Path, campaign: Path, local: str):
    a, _, bare = two_clones(tmp_path, campaign)
    # a wide group-commit window: the kill lands after results are written, before commit
    proc = _start(a, "run", local, "slow.sh", "--name", "k", "--json", "--",
                  "{0.2;0.3;0.4;0.5;0.6;0.7;2.5;2.6}", env={"EXPEGIT_COMMIT_DELAY": "30"})
    deadline = time.monotonic() + 60
    while len(_uncommitted_records(a)) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fetched = {line.split("/")[1] for line in _uncommitted_records(a)}
    expegit("sync", cwd=a)  # commits the records left written, and pushes them
    on_remote = set(git(bare, "ls-tree", "--name-only", "main", "runs/").split())
    assert {f"runs/{r}" for r in fetched} <= on_remote
    expegit("run", local, "slow.sh", "--resume", "--name", "k", cwd=a)
    assert len(records(a)) == 8
    log = git(a, "log", "--name-only", "--format=", "--", "runs")
    written = [line for line in log.splitlines() if line.endswith("record.json")]
    assert len(written) == len(set(written)) == 8  # each record committed once
    assert_clean(a)


def test_an_unreachable_remote_is_one_clear_error(campaign: Path, tmp_path: Path):
    git(campaign, "remote", "add", "origin", str(tmp_path / "nowhere.git"))
    head = git(campaign, "rev-parse", "HEAD")
    assert_refused(expegit("sync", cwd=campaign, check=False), "cannot reach origin")
    assert git(campaign, "rev-parse", "HEAD") == head
    assert_clean(campaign)
