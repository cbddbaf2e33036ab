"""Lifecycle without traps: cancel twice then retry, `--resume` saying what it will do, and
`sched`'s exit code and failure lines like batch's (local profile, real processes)."""

from __future__ import annotations

import subprocess
import sys
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
