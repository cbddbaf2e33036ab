"""One batch across several clusters (`runaway batch slurm,sge,local ...`), on the test bed:
work flows to every cluster, one journal names where each execution ran, a cluster that
cannot allocate leaves the batch running on the others, and SIGKILL + `--resume` recovers
runs on every cluster and leaves no allocation behind."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.helpers import (
    local_profile,
    slurm_profile,
    wait_started,
    write_profile,
    write_script,
)
from tests.runaway.test_batch_faults import exactly_once
from tests.runaway.test_batch_faults import with_log as with_user_log
from tests.schedulers.scenarios import slurm_jobs_left
from tests.schedulers.test_sge import assert_nothing_left, sge_profile

SCRIPT = """\
#!/usr/bin/env bash
sleep "${SLEEP:-0.4}"
echo "$1" >> "$HOME/.orchestra-tests/$LOG"
"""


def with_log(testbed, tmp: Path, body: str = SCRIPT) -> tuple[Path, Path]:
    """The script and its log on the shared home, written to by the bed's user (Slurm, SGE)
    and by root (the local cluster) alike."""
    script, log = with_user_log(testbed, tmp, body)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch(mode=0o666)
    log.chmod(0o666)
    script.write_text(script.read_text().replace('"$HOME/.orchestra-tests/', f'"{log.parent}/'))
    return script, log


def runaway(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runaway", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def sweep(n: int) -> str:
    return "{" + ";".join(str(i) for i in range(n)) + "}"


def where(folder: Path) -> dict[str, int]:
    """Completed executions per cluster (the part of the node name before '/')."""
    db = sqlite3.connect(folder / "journal.sqlite")
    try:
        nodes = db.execute("SELECT node FROM executions WHERE state = 'completed'").fetchall()
    finally:
        db.close()
    counts: dict[str, int] = {}
    for (node,) in nodes:
        cluster = node.split("/", 1)[0]
        counts[cluster] = counts.get(cluster, 0) + 1
    return counts


def test_one_batch_runs_on_slurm_sge_and_local(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT)
    profiles = ",".join(str(p) for p in (
        slurm_profile(testbed, tmp_path, poll_interval="1s", idle_timeout="5s"),
        sge_profile(testbed, tmp_path, slots=2, idle_timeout="5s"),
        local_profile(tmp_path, slots=2)))
    n = 60
    proc = runaway("batch", profiles, str(script), "--name", "three", "--json", "--",
                   sweep(n), cwd=tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    exactly_once(log, n)
    ran = where(tmp_path / "batch" / "three")
    assert set(ran) == {"slurm-ssh", "sge", "loc"}, ran
    assert sum(ran.values()) == n
    granted = [json.loads(line) for line in out.splitlines()
               if json.loads(line)["event"] == "AllocationGranted"]
    assert {g["allocation"].split("/")[0] for g in granted} == {"slurm-ssh", "sge", "loc"}
    status = subprocess.run([sys.executable, "-m", "runaway", "status", "three"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and f"completed {n}" in status.stdout, status.stdout
    assert slurm_jobs_left(testbed) == []
    assert_nothing_left(testbed)  # a deleted SGE job lingers a moment in state `dr`


def test_a_cluster_that_cannot_allocate_leaves_the_batch_to_the_others(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT)
    refused = write_profile(tmp_path / "profiles", "nowhere", {
        **_yaml(slurm_profile(testbed, tmp_path)), "name": "nowhere",
        "scheduler": {"kind": "slurm", "nodes": 1, "walltime": "10m",
                      "options": ["--partition=no-such-partition"]}})
    n = 12
    proc = runaway("batch", f"{refused},{local_profile(tmp_path, slots=3)}", str(script),
                   "--name", "half", "--", sweep(n), cwd=tmp_path)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    exactly_once(log, n)
    assert where(tmp_path / "batch" / "half") == {"loc": n}
    warnings = [line for line in err.splitlines() if "cluster nowhere cannot take work" in line]
    assert len(warnings) == 1, err[-3000:]
    assert "no-such-partition" in warnings[0] or "partition" in warnings[0].lower(), warnings


def test_sigkill_then_resume_recovers_runs_on_every_cluster(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.4}", "3"))
    profiles = (f"{slurm_profile(testbed, tmp_path, poll_interval='1s')},"
                f"{local_profile(tmp_path, slots=2)}")
    n = 16
    proc = runaway("batch", profiles, str(script), "--name", "kill", "--json", "--",
                   sweep(n), cwd=tmp_path)
    wait_started(proc, 6)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = runaway("batch", "--resume", "--name", "kill", cwd=tmp_path)
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-3000:]
    exactly_once(log, n)
    ran = where(tmp_path / "batch" / "kill")
    assert set(ran) == {"slurm-ssh", "loc"} and sum(ran.values()) == n, ran
    assert slurm_jobs_left(testbed) == []


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_cancel_after_sigkill_kills_runs_on_every_cluster(testbed, tmp_path):
    marker = f"job-{uuid.uuid4().hex[:6]}"
    script = write_script(tmp_path / "code", "slow.sh", f"exec -a {marker} sleep 120\n")
    profiles = f"{slurm_profile(testbed, tmp_path)},{local_profile(tmp_path, slots=2)}"
    proc = runaway("batch", profiles, str(script), "--name", "stop", "--json", "--",
                   sweep(8), cwd=tmp_path)
    wait_started(proc, 6)

    def running() -> dict[str, bool]:
        local = subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
        nodes = any(marker in p for n in testbed.nodes for p in testbed.procs(n))
        return {"local": local, "slurm": nodes}

    deadline = time.monotonic() + 30
    while not all(running().values()):
        assert time.monotonic() < deadline, running()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = subprocess.run([sys.executable, "-m", "runaway", "cancel", "stop"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    db = sqlite3.connect(tmp_path / "batch" / "stop" / "journal.sqlite")
    try:
        states = {s for (s,) in db.execute("SELECT state FROM executions")}
    finally:
        db.close()
    assert states == {"cancelled"}
    assert running() == {"local": False, "slurm": False}
    assert slurm_jobs_left(testbed) == []
