"""Batches that survive faults, on the real test bed; each test asserts the final journal.

Every execution appends its argument to a log on the shared home when it finishes, so the
tests see that each one completed exactly once, whatever broke on the way."""

from __future__ import annotations

import pwd
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from tests.helpers import (
    slurm_profile,
    ssh_options,
    stock_profile,
    wait_started,
    write_profile,
    write_script,
)
from tests.schedulers.scenarios import slurm_jobs_left

SCRIPT = """\
#!/usr/bin/env bash
sleep "${SLEEP:-0.5}"
echo "$1" >> "$HOME/.orchestra-tests/$LOG"
"""


def batch(profile: Path, script: Path, name: str, n: int, cwd: Path, *extra: str):
    return subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", name,
         "--json", *extra, "--", "{" + ";".join(str(i) for i in range(n)) + "}"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout: float = 240) -> int:
    """Wait for the batch, reading its --json lines meanwhile: a pipe nobody reads fills and
    stops the writer (150 executions' events are some 58 KB, about what a pipe holds)."""
    reader = threading.Thread(target=proc.stdout.read, daemon=True)
    reader.start()
    code = proc.wait(timeout=timeout)
    reader.join(timeout=30)
    return code


def rows(folder: Path) -> list[tuple]:
    db = sqlite3.connect(folder / "journal.sqlite")
    try:
        return db.execute("SELECT label, state, lost FROM executions ORDER BY seq").fetchall()
    finally:
        db.close()


def with_log(testbed, tmp: Path, body: str = SCRIPT) -> tuple[Path, Path]:
    tag = uuid.uuid4().hex[:8]
    home = Path(pwd.getpwnam(testbed.user).pw_dir)
    log = home / ".orchestra-tests" / tag
    script = write_script(tmp / "code", "job.sh", body.replace("$LOG", tag))
    return script, log


def exactly_once(log: Path, n: int) -> None:
    lines = log.read_text().split()
    assert sorted(lines, key=int) == [str(i) for i in range(n)]


def test_dropped_connections_lose_nothing(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path)
    profile = stock_profile(testbed, tmp_path, slots=8)
    proc = batch(profile, script, "drop", 40, tmp_path)
    wait_started(proc, 12)
    listener = (testbed.dir / "run" / "sshd-local.pid").read_text().strip()
    subprocess.run(["pkill", "-P", listener], check=True)  # every session of this sshd dies
    assert finish(proc) == 0, proc.stderr.read()
    assert {r[1] for r in rows(tmp_path / "batch/drop")} == {"completed"}
    exactly_once(log, 40)


def test_stock_sshd_limits_give_no_failure(testbed, tmp_path):
    """MaxSessions 10 / MaxStartups 10:30:100 and 24 slots: back-pressure, never failure."""
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "0.1"))
    profile = stock_profile(testbed, tmp_path, slots=24)
    proc = batch(profile, script, "stock", 150, tmp_path)
    assert finish(proc) == 0, proc.stderr.read()
    assert [r[1:] for r in rows(tmp_path / "batch/stock")] == [("completed", 0)] * 150
    exactly_once(log, 150)


def test_dead_node_work_is_requeued_elsewhere(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "1"))
    profile = write_profile(tmp_path / "profiles", "nodes", {
        "ssh": ssh_options(testbed, host="login"),
        "scheduler": {"kind": "hosts", "hosts": [{"host": n, "slots": 3} for n in testbed.nodes]},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"})
    proc = batch(profile, script, "dead", 18, tmp_path)
    try:
        wait_started(proc, 9)
        testbed.kill_host("node2")
        assert finish(proc) == 0, proc.stderr.read()
    finally:
        testbed.revive()
    final = rows(tmp_path / "batch/dead")
    assert {r[1] for r in final} == {"completed"}
    assert sum(r[2] for r in final) >= 1  # some were lost with node2, and requeued
    exactly_once(log, 18)


def test_cancelled_allocation_is_replaced(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "1"))
    profile = slurm_profile(testbed, tmp_path, poll_interval="1s")
    proc = batch(profile, script, "scancel", 16, tmp_path)
    wait_started(proc, 4)
    out = testbed.ssh("login", "squeue -h -u $USER -o '%i %j'", check=True).stdout
    ours = [line.split()[0] for line in out.splitlines() if "orchestra-" in line]
    assert ours, out
    testbed.ssh("login", f"scancel {ours[0]}", check=True)
    assert finish(proc) == 0, proc.stderr.read()
    final = rows(tmp_path / "batch/scancel")
    assert {r[1] for r in final} == {"completed"}
    assert sum(r[2] for r in final) >= 1
    assert slurm_jobs_left(testbed) == []


def test_sigint_twice_on_slurm_leaves_nothing(testbed, tmp_path):
    marker = f"job-{uuid.uuid4().hex[:6]}"
    script = write_script(tmp_path / "code", "slow.sh", f"exec -a {marker} sleep 120\n")
    profile = slurm_profile(testbed, tmp_path)
    proc = batch(profile, script, "int", 8, tmp_path)
    wait_started(proc, 4)
    deadline = time.monotonic() + 20
    while not any(marker in p for n in testbed.nodes for p in testbed.procs(n)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert finish(proc, 60) == 130
    assert [r[1] for r in rows(tmp_path / "batch/int")] == ["queued"] * 8
    assert slurm_jobs_left(testbed) == []
    assert not any(marker in p for n in testbed.nodes for p in testbed.procs(n))
