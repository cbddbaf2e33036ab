"""Lifecycle without traps: cancel twice then retry, `--resume` saying what it will do, and
`sched`'s exit code and failure lines like batch's (local profile, real processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import local_profile, wait_started, write_script
from tests.runaway.test_batch import journal, runaway

REPO = Path(__file__).resolve().parents[2]


def test_cancel_twice_still_retryable(tmp_path):
    gate = tmp_path / "slow"
    gate.touch()
    script = write_script(tmp_path / "code", "job.sh", f"""\
        #!/usr/bin/env bash
        while [ -e {gate} ]; do sleep 0.2; done
        echo "done $1"
        """)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(local_profile(tmp_path, slots=2)),
         str(script), "--name", "c", "--json", "--", "{1;2;3;4}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_started(proc, 2)
        first = runaway("cancel", "c", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    second = runaway("cancel", "c", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "runaway retry c" in second.stderr
    assert {r[2] for r in journal(tmp_path / "batch/c")} == {"cancelled"}
    resumed = runaway("batch", "--resume", "--name", "c", cwd=tmp_path)
    assert "4 cancelled not run again" in resumed.stderr, resumed.stderr
    gate.unlink()
    retried = runaway("retry", "c", cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert "4 execution(s) of batch c queued again" in retried.stderr
    assert [r[2] for r in journal(tmp_path / "batch/c")] == ["completed"] * 4


def test_sched_exit_code_and_failure_lines_like_batch(tmp_path):
    script = write_script(tmp_path / "code", "bad.sh",
                          "#!/usr/bin/env bash\necho 'no such dataset' >&2\nexit 4\n")
    command = f"{sys.executable} {REPO / 'examples/schedulers/random_search.py'} -n 2"
    done = runaway("sched", local_profile(tmp_path), script, command, "--name", "s",
                   cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "exit 4: no such dataset" in done.stderr
    shown = runaway("results", "s", "--format", "csv", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("failed") == 2  # the same rows as a batch's


def _stopped_with_grace(tmp_path: Path, grace: str) -> tuple[bool, float]:
    """Start a script that saves a checkpoint 1.5 s after SIGTERM, stop the batch (SIGINT
    twice), and say whether the checkpoint was saved, and how long the stop took."""
    saved, running = tmp_path / "saved", tmp_path / "running"
    script = write_script(tmp_path / "code", "ckpt.sh", f"""\
        #!/usr/bin/env bash
        trap 'sleep 1.5; echo saved > {saved}; exit 0' TERM
        touch {running}
        sleep 60 &
        wait
        """)
    profile = local_profile(tmp_path, slots=1, kill_grace=grace)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", "g",
         "--json", "--", "{1}"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        wait_started(proc, 1)
        deadline = time.monotonic() + 20
        while not running.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, proc.stderr.read()
        return saved.exists(), time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test run in the background ignores it


def test_kill_grace_gives_a_stopped_script_the_time_it_asked_for(tmp_path):
    saved, _ = _stopped_with_grace(tmp_path / "long", "4s")
    assert saved  # SIGTERM, then 4 s: the 1.5 s checkpoint is written
    saved, seconds = _stopped_with_grace(tmp_path / "short", "0.5s")
    assert not saved and seconds < 4  # SIGKILL after 0.5 s: no checkpoint, no 5 s wait


def test_a_bad_kill_grace_is_one_clear_error(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "#!/usr/bin/env bash\ntrue\n")
    for value in ("soon", "2h"):
        done = runaway("exec", local_profile(tmp_path / value, kill_grace=value), script,
                       cwd=tmp_path)
        assert done.returncode == 2 and "kill_grace" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
