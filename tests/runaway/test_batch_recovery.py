"""The driver loop under the faults of the driver-loop issue, on the real bed: a stalled
controller, resume with a node unplugged, resume of `reach: srun`, two resumes at once.

As in test_batch_faults, every execution appends its argument to a log on the shared home
when it finishes, so the tests see that each one completed exactly once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.helpers import slurm_profile, ssh_options, wait_started, write_profile
from tests.runaway.test_batch_faults import SCRIPT, batch, exactly_once, finish, rows, with_log
from tests.schedulers.scenarios import slurm_jobs_left


def resume(name: str, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", "--resume", "--name", name,
         "--json", *extra], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def placed(folder: Path) -> list[tuple]:
    db = sqlite3.connect(folder / "journal.sqlite")
    try:
        return db.execute("SELECT node, allocation, digest FROM executions "
                          "WHERE node IS NOT NULL ORDER BY seq").fetchall()
    finally:
        db.close()


def stalled(testbed, daemon: str, seconds: float, start) -> subprocess.Popen:
    """Stop `daemon` on login with SIGSTOP, start the batch, continue it `seconds` later."""
    testbed.on("login", "pkill", "-STOP", "-x", daemon, check=True)
    try:
        proc = start()
        time.sleep(seconds)
    finally:
        testbed.on("login", "pkill", "-CONT", "-x", daemon, check=True)
    return proc


def test_stalled_slurmctld_delays_the_batch_and_loses_nothing(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "0.1"))
    profile = slurm_profile(testbed, tmp_path, poll_interval="1s")
    proc = stalled(testbed, "slurmctld", 15,
                   lambda: batch(profile, script, "stall", 60, tmp_path))
    code = finish(proc, 300)
    stderr = proc.stderr.read()
    assert code == 0, stderr
    assert [r[1] for r in rows(tmp_path / "batch/stall")] == ["completed"] * 60
    exactly_once(log, 60)
    assert slurm_jobs_left(testbed) == []


def test_stalled_sge_qmaster_delays_the_batch_and_loses_nothing(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "0.1"))
    profile = write_profile(tmp_path / "profiles", "sge", {
        "ssh": ssh_options(testbed, host="login"),
        "scheduler": {"kind": "sge", "nodes": 1, "walltime": "10m", "poll_interval": "1s"},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"})
    proc = stalled(testbed, "sge_qmaster", 15,
                   lambda: batch(profile, script, "sgestall", 20, tmp_path))
    code = finish(proc, 300)
    assert code == 0, proc.stderr.read()
    assert [r[1] for r in rows(tmp_path / "batch/sgestall")] == ["completed"] * 20
    exactly_once(log, 20)


def test_resume_with_a_node_unplugged_fences_its_runs_and_runs_them_elsewhere(testbed,
                                                                              tmp_path):
    body = ('#!/usr/bin/env bash\necho "$1" >> "$HOME/.orchestra-tests/$LOG.started"\n'
            'sleep 8\necho "$1 $(hostname)" >> "$HOME/.orchestra-tests/$LOG"\n')
    script, log = with_log(testbed, tmp_path, body)
    started = log.with_name(log.name + ".started")
    profile = write_profile(tmp_path / "profiles", "nodes", {
        "ssh": ssh_options(testbed, host="login", connect_timeout="3s"),
        "scheduler": {"kind": "hosts", "hosts": [{"host": n, "slots": 2}
                                                 for n in testbed.nodes]},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"})
    proc = batch(profile, script, "unplug", 6, tmp_path, "--recover-patience", "5")
    try:
        wait_started(proc, 6)
        deadline = time.monotonic() + 30  # every script runs (not only placed)
        while not started.exists() or len(started.read_text().split()) < 6:
            assert time.monotonic() < deadline, "the scripts did not all start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        on_node1 = [r for r in placed(tmp_path / "batch/unplug") if r[0] == "node1"]
        assert on_node1, "nothing was placed on node1"
        testbed.unplug("node1")
        again = resume("unplug", tmp_path)
        code = finish(again, 240)
        stderr = again.stderr.read()
    finally:
        testbed.plug("node1")
    assert code == 0, stderr
    final = rows(tmp_path / "batch/unplug")
    assert [r[1] for r in final] == ["completed"] * 6
    # the fenced runs ran again on a reachable node, and only those results were recorded
    folder = tmp_path / "batch/unplug"
    db = sqlite3.connect(folder / "journal.sqlite")
    fenced = db.execute("SELECT uuid, node, message FROM executions WHERE attempts > 1").fetchall()
    db.close()
    assert len(fenced) == len(on_node1)
    assert all(node != "node1" for _, node, _ in fenced), fenced
    # the copies left on node1 finish later (its link is back) and append their lines, but
    # each execution ran to completion exactly once on a reachable node; wait for those
    # copies (or, if some never finish, for well past their 8-second sleep)
    deadline = time.monotonic() + 20
    while True:
        lines = [line.split() for line in log.read_text().splitlines()]
        late = len([1 for _, host in lines if host == "node1"])
        if late >= len(on_node1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(int(n) for n, host in lines if host != "node1") == list(range(6))
    assert len([1 for _, host in lines if host == "node1"]) <= len(on_node1)


def test_srun_batch_killed_and_resumed_runs_each_once(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "${SLEEP:-4}"))
    profile = slurm_profile(testbed, tmp_path, reach="srun")
    proc = batch(profile, script, "srun", 8, tmp_path)
    wait_started(proc, 4)
    deadline = time.monotonic() + 30  # placements are committed as their orders leave
    while len(placed(tmp_path / "batch/srun")) < 4:
        assert time.monotonic() < deadline, "no placement was committed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    jobs = {alloc for _, alloc, _ in placed(tmp_path / "batch/srun")}
    assert jobs and None not in jobs  # each placed run knows its allocation (the Slurm job)
    again = resume("srun", tmp_path)
    assert finish(again, 240) == 0, again.stderr.read()
    assert [r[1] for r in rows(tmp_path / "batch/srun")] == ["completed"] * 8
    exactly_once(log, 8)
    assert slurm_jobs_left(testbed) == []


def test_two_resumes_at_once_one_runs_the_other_is_refused(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "2"))
    profile = write_profile(tmp_path / "profiles", "nodes", {
        "ssh": ssh_options(testbed, host="login"),
        "scheduler": {"kind": "hosts", "hosts": [{"host": "node2", "slots": 2}]},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"})
    proc = batch(profile, script, "two", 6, tmp_path)
    wait_started(proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    first, second = resume("two", tmp_path), resume("two", tmp_path)
    codes = sorted([finish(first, 120), finish(second, 120)])
    errors = first.stderr.read() + second.stderr.read()
    assert codes == [0, 2], errors
    assert errors.count("already running") == 1, errors
    assert "Traceback" not in errors
    assert [r[1] for r in rows(tmp_path / "batch/two")] == ["completed"] * 6
    exactly_once(log, 6)
