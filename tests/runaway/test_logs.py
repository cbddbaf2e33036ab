"""`runaway logs NAME|UUID [-f]`: the live output of a running execution, read on its node,
followed to its end; the fetched output of a finished one (local and the bed's Slurm)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.helpers import local_profile, slurm_profile, wait_started, write_script
from tests.runaway.test_batch import runaway
from tests.runaway.test_clean import gently, stop


def _rows(folder: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(folder / "journal.sqlite")
    try:
        return db.execute("SELECT uuid, state FROM executions ORDER BY seq").fetchall()
    finally:
        db.close()


def _wait_output(command, text: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `command()` until its stdout holds `text` (the script writes as it goes)."""
    deadline = time.monotonic() + timeout
    while True:
        done = command()
        if text in done.stdout or time.monotonic() > deadline:
            return done
        time.sleep(0.3)


def _batch(profile: Path, script: Path, name: str, cwd: Path, *template: str):
    return subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", name,
         "--json", "--", *template], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def _follow(target: str, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runaway", "logs", target, "-f", *extra],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_logs_live_followed_and_fetched_on_local(tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    script = write_script(tmp_path / "code", "talk.sh", f"""\
        #!/usr/bin/env bash
        echo "started $1"; echo "warming $1" >&2
        while [ -e {gate} ]; do sleep 0.1; done
        echo "finished $1"; exit 3
        """)
    profile = local_profile(tmp_path, slots=2)
    proc = _batch(profile, script, "talk", tmp_path, "{a;b}")
    try:
        wait_started(proc, 2)
        listing = runaway("logs", "talk", cwd=tmp_path)
        assert listing.returncode == 0, listing.stderr
        (first, _), (second, _) = _rows(tmp_path / "batch/talk")
        assert "2 executions of batch talk are running" in listing.stdout
        assert first in listing.stdout and second in listing.stdout

        live = _wait_output(lambda: runaway("logs", "talk", "--uuid", first[:8], cwd=tmp_path),
                            "started a")
        assert live.returncode == 0, live.stderr
        assert live.stdout == "started a\n" and "warming a" in live.stderr

        follower = _follow(second[:8], tmp_path)
        assert follower.stdout.readline() == "started b\n"  # live, from the run folder
        time.sleep(1)
        assert follower.poll() is None  # following: it waits for the run to end
        gate.unlink()
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert out == "finished b\n"
        assert "warming b" in err and "ended: failed (exit 3)" in err
    finally:
        if gate.exists():
            gate.unlink()
        proc.wait(timeout=60)
    fetched = runaway("logs", first, cwd=tmp_path)  # finished: the fetched files
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == "started a\nfinished a\n" and "warming a" in fetched.stderr
    nothing = runaway("logs", "talk", cwd=tmp_path)
    assert nothing.returncode == 2 and "no execution of batch talk is running" in nothing.stderr


def test_an_execution_said_started_is_running_for_logs_while_its_agent_was_slow(tmp_path):
    """`started` is said as the order leaves, once the node's agent is up: not before (the
    event said it while this slow interpreter was starting, and `logs` then found nothing
    running in the journal)."""
    slow = tmp_path / "slow-python"
    slow.write_text('#!/bin/sh\nsleep 1\nexec python3 "$@"\n')
    slow.chmod(0o755)
    gate = tmp_path / "gate"
    gate.touch()
    script = write_script(tmp_path / "code", "wait.sh", f"""\
        #!/usr/bin/env bash
        while [ -e {gate} ]; do sleep 0.1; done
        """)
    profile = local_profile(tmp_path, slots=2, agent=str(slow))
    proc = _batch(profile, script, "slow", tmp_path, "{a;b}")
    try:
        wait_started(proc, 2)
        listing = runaway("logs", "slow", cwd=tmp_path)
        assert listing.returncode == 0, listing.stderr
        assert "2 executions of batch slow are running" in listing.stdout
    finally:
        if gate.exists():
            gate.unlink()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()
    assert [state for _, state in _rows(tmp_path / "batch/slow")] == ["completed", "completed"]


def test_logs_of_an_exec_run_and_clear_errors(tmp_path):
    script = write_script(tmp_path / "code", "hi.sh", "#!/usr/bin/env bash\necho hi $1\n")
    profile = local_profile(tmp_path)
    done = runaway("exec", profile, script, "--", "there", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "runs").iterdir()
    shown = runaway("logs", run.name[:6], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "hi there\n"
    for target, words in (("nope", "no batch of that name"),
                          ("zzzzzzzz", "no execution with that uuid")):
        bad = runaway("logs", target, cwd=tmp_path)
        assert bad.returncode == 2, bad.stderr
        assert words in bad.stderr and "Traceback" not in bad.stderr


def _until_tail(testbed, node: str, present: bool, timeout: float = 30) -> None:
    """Wait until a follower's `tail` of a run's output is (or is no longer) on the node."""
    deadline = time.monotonic() + timeout
    while True:
        tails = [p for p in testbed.procs(node) if "tail" in p and ".orchestra/std" in p]
        if bool(tails) == present:
            return
        assert time.monotonic() < deadline, f"tails on {node}: {tails}"
        time.sleep(0.2)


def test_logs_followed_on_slurm(testbed, tmp_path):
    tag = uuid.uuid4().hex[:8]
    script = write_script(tmp_path / "code", "talk.sh", f"""\
        #!/usr/bin/env bash
        echo "on $(hostname)"
        while [ ! -e "$HOME/gate-{tag}" ]; do sleep 0.2; done
        echo "finished"
        """)
    profile = slurm_profile(testbed, tmp_path, poll_interval="1s")
    proc = _batch(profile, script, "talk", tmp_path, "x")
    try:
        wait_started(proc, 1)  # a busy bed may take minutes to grant the allocation
        live = _wait_output(lambda: gently("logs", "talk", cwd=tmp_path), "on node")
        assert live.returncode == 0, live.stderr
        assert live.stdout.startswith("on node"), live.stdout
        node = live.stdout.split()[1]
        quitter = _follow("talk", tmp_path)  # Ctrl-C while following: nothing stays behind
        _until_tail(testbed, node, present=True)
        quitter.send_signal(signal.SIGINT)
        quitter.wait(timeout=60)
        _until_tail(testbed, node, present=False)
        follower = _follow("talk", tmp_path)
        assert follower.stdout.readline().startswith("on node")  # live, from the node
        time.sleep(1)
        assert follower.poll() is None
        testbed.ssh("login", f"touch ~/gate-{tag}")
        out, err = follower.communicate(timeout=120)
        assert follower.returncode == 0, err
        assert out == "finished\n" and "ended: completed (exit 0)" in err, (out, err)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        _until_tail(testbed, node, present=False)
    finally:
        testbed.ssh("login", f"touch ~/gate-{tag}; sleep 1; rm -f ~/gate-{tag}")
        if proc.poll() is None:
            stop(proc)
