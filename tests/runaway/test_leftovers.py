"""After a triple Ctrl-C (the third press exits at once, before the remote processes are
killed and their run folders removed), `cancel`, `--resume` and `retry` clean up what the
interrupted runs left, and `clean` finds it (local profile, real processes and signals)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from tests.helpers import local_profile, slurm_profile, wait_started, write_script
from tests.runaway.test_batch import journal, runaway
from tests.runaway.test_clean import gently, stop


def _procs(marker: str) -> list[str]:
    """Command lines of this machine's processes that mention marker."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in line and "pytest" not in line:
            out.append(line)
    return out


def _triple_interrupt(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A batch of two executions that ignore SIGTERM (so the kill of the second Ctrl-C is
    still waiting out its grace, 2 s here), interrupted three times: it exits at once."""
    gate = tmp_path / "gate"
    gate.touch()
    script = write_script(tmp_path / "code", f"stubborn-{uuid.uuid4().hex[:8]}.sh", f"""\
        #!/usr/bin/env bash
        trap '' TERM
        while [ -e {gate} ]; do sleep 0.1; done
        echo "done $1"
        """)
    profile = local_profile(tmp_path, slots=2, kill_grace="2s")
    _interrupt_thrice(tmp_path, ["batch", str(profile), str(script), "--name", name, "--json",
                                 "--", "{1;2}"])
    return profile, script, gate


def _interrupt_thrice(tmp_path: Path, argv: list[str]) -> None:
    """Start `runaway ARGV` (two executions that ignore SIGTERM) and press Ctrl-C thrice."""
    proc = subprocess.Popen([sys.executable, "-m", "runaway", *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_started(proc, 2)
    runs = tmp_path / "remote/runs"
    while len(list(runs.glob("*/.orchestra/pid"))) < 2:
        time.sleep(0.1)
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.7)
    assert proc.wait(timeout=30) == 130
    assert "interrupted again: exiting without cleanup" in proc.stderr.read()
    assert len(list(runs.iterdir())) == 2  # left behind


def test_cancel_after_a_triple_ctrl_c_removes_what_the_runs_left(tmp_path):
    profile, script, gate = _triple_interrupt(tmp_path, "t")
    try:
        _cancel_cleans_up(tmp_path, profile, script, gate)
    finally:
        gate.unlink(missing_ok=True)  # whatever survived ends


def _cancel_cleans_up(tmp_path: Path, profile: Path, script: Path, gate: Path) -> None:
    runs = tmp_path / "remote/runs"
    found = runaway("clean", profile, "--dry-run", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert "t #1" in found.stdout and "t #2" in found.stdout  # found, with their batch
    cancelled = runaway("cancel", "t", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cleaned up after 2 interrupted execution(s)" in cancelled.stderr
    assert list(runs.iterdir()) == []
    assert _procs(script.name) == []  # and nothing of them runs
    again = runaway("cancel", "t", cwd=tmp_path)  # once is enough
    assert again.returncode == 0 and "cleaned up" not in again.stderr
    gate.unlink()
    retried = runaway("retry", "t", cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert [r[2] for r in journal(tmp_path / "batch/t")] == ["completed"] * 2
    assert list(runs.iterdir()) == []


def test_a_retry_interrupted_thrice_is_cleaned_up_again(tmp_path):
    """A retry runs an execution under its first run id again: what it leaves when
    interrupted is cleaned up too (each attempt once, not each run id)."""
    profile, script, gate = _triple_interrupt(tmp_path, "twice")
    try:
        first = runaway("cancel", "twice", cwd=tmp_path)
        assert "cleaned up after 2 interrupted execution(s)" in first.stderr, first.stderr
        _interrupt_thrice(tmp_path, ["retry", "twice", "--json"])
        second = runaway("cancel", "twice", cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        assert "cleaned up after 2 interrupted execution(s)" in second.stderr, second.stderr
        assert list((tmp_path / "remote/runs").iterdir()) == []
        assert _procs(script.name) == []
    finally:
        gate.unlink(missing_ok=True)


def test_resume_after_a_triple_ctrl_c_removes_what_the_runs_left(tmp_path):
    _, script, gate = _triple_interrupt(tmp_path, "r")
    runs = tmp_path / "remote/runs"
    try:
        assert len(_procs(script.name)) == 2  # still running, past the triple Ctrl-C
    finally:
        gate.unlink()
    resumed = runaway("batch", "--resume", "--name", "r", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "cleaned up after 2 interrupted execution(s)" in resumed.stderr
    assert [r[2] for r in journal(tmp_path / "batch/r")] == ["completed"] * 2
    assert list(runs.iterdir()) == []  # the interrupted runs' folders too, not only the new
    assert _procs(script.name) == []


def _jobs_alive(testbed, jobs: list[str], within: float = 60) -> list[str]:
    """Which of these Slurm jobs are still in squeue (waiting out COMPLETING a while)."""
    deadline = time.monotonic() + within
    while True:
        out = testbed.ssh("login", f"squeue -h -j {','.join(jobs)} -o '%i %T'").stdout
        alive = [line for line in out.splitlines() if line.strip()]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def test_cancel_after_a_triple_ctrl_c_on_slurm_leaves_no_process_folder_or_job(testbed,
                                                                              tmp_path):
    tag = uuid.uuid4().hex[:8]
    script = write_script(tmp_path / "code", f"stubborn-{tag}.sh", f"""\
        #!/usr/bin/env bash
        trap '' TERM
        while [ ! -e "$HOME/gate-{tag}" ]; do sleep 0.2; done
        """)
    profile = slurm_profile(testbed, tmp_path, poll_interval="1s")
    root = yaml.safe_load(profile.read_text())["directory"].removeprefix("~/")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", "s",
         "--json", "--", "{1;2}"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_started(proc, 2)  # a busy bed may take minutes to grant the allocation
        pids = f"ls ~/{root}/runs/*/.orchestra/pid 2>/dev/null | wc -l"
        while testbed.ssh("login", pids).stdout.strip() != "2":
            time.sleep(0.2)
        for _ in range(3):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.7)
        assert proc.wait(timeout=30) == 130
        assert "interrupted again: exiting without cleanup" in proc.stderr.read()
        runs = f"ls ~/{root}/runs"
        assert len(testbed.ssh("login", runs).stdout.split()) == 2  # left behind
        db = sqlite3.connect(tmp_path / "batch/s/journal.sqlite")
        jobs = [r[0] for r in db.execute("SELECT id FROM allocations")]
        nodes = {r[0] for r in db.execute("SELECT node FROM executions")}
        db.close()
        assert jobs and _jobs_alive(testbed, jobs, within=0)  # the allocation too

        cancelled = gently("cancel", "s", cwd=tmp_path)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cleaned up after 2 interrupted execution(s)" in cancelled.stderr
        assert testbed.ssh("login", runs).stdout.split() == []
        for node in nodes:
            assert [p for p in testbed.procs(node) if script.name in p] == []
        assert _jobs_alive(testbed, jobs) == []
    finally:
        testbed.ssh("login", f"touch ~/gate-{tag}")
        if proc.poll() is None:
            stop(proc)
        time.sleep(1)
        testbed.ssh("login", f"rm -f ~/gate-{tag}")
