"""Post-commands and the canary of `runaway batch` on the shared driver loop (local profile)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

from tests.helpers import local_profile, wait_started, write_script
from tests.runaway.test_batch import journal, runaway


def test_post_command_with_a_large_output_gets_its_tail_and_the_paths(tmp_path):
    script = write_script(tmp_path / "code", "big.sh",
                          "head -c 300000 /dev/zero | tr '\\\\0' x; echo; echo last line\n")
    post = ('printf "%s %s %s %s\\n" "$RUNAWAY_STDOUT_TRUNCATED" "${#RUNAWAY_STDOUT}" '
            '"$(wc -c < "$RUNAWAY_STDOUT_PATH")" "$(printf %s "$RUNAWAY_STDOUT" | tail -n 1)" '
            '> post.txt')
    done = runaway("batch", local_profile(tmp_path), script, "--name", "big", "-x", "3",
                   "-p", post, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    folders = [p for p in (tmp_path / "batch/big").iterdir() if p.is_dir()]
    assert len(folders) == 3
    for folder in folders:
        truncated, env_size, file_size, last = (folder / "post.txt").read_text().split(" ", 3)
        assert truncated == "1" and int(file_size) == 300000 + 1 + 10
        # the tail, cut at a line start: the 300 KB line is left out, the last line is there
        assert 0 < int(env_size) <= 64 * 1024 and last == "last line\n"
    assert "post-command" in done.stderr and "last 64 KiB" in done.stderr  # said so


def test_post_command_is_killed_on_cancel(tmp_path):
    marker = f"post-{uuid.uuid4().hex[:8]}"
    script = write_script(tmp_path / "code", "job.sh", "true\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(local_profile(tmp_path)), str(script),
         "--name", "p", "--json", "-p", f"bash -c 'exec -a {marker} sleep 300'"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ours = lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True,  # noqa: E731
                                  text=True).stdout.split()
    try:
        wait_started(proc, 1)
        deadline = time.monotonic() + 20
        while not ours():
            assert time.monotonic() < deadline, "the post-command never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # drain: the post-command is part of the record
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # cancel now
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ours() == []


CANARY = """\
#!/usr/bin/env bash
case "$1" in bad) exit 7;; esac
echo ok
"""


def test_canary_on_resume_judges_only_what_it_ran(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", CANARY)
    (tmp_path / "args.txt").write_text("bad\nok1\nok2\nok3\n")
    profile = local_profile(tmp_path, slots=1)
    first = runaway("batch", profile, script, "--name", "c", "-A", tmp_path / "args.txt",
                    "--canary", "2", cwd=tmp_path)
    assert first.returncode != 0 and "canary" in first.stderr, first.stderr
    assert [r[2] for r in journal(tmp_path / "batch/c")] == \
        ["failed", "completed", "queued", "queued"]
    # resumed (after a fix elsewhere): the canary is the next two it runs, not row 1 again
    again = runaway("batch", "--resume", "--name", "c", "--json", cwd=tmp_path)
    assert "canary" not in again.stderr, again.stderr
    assert [r[2] for r in journal(tmp_path / "batch/c")] == \
        ["failed", "completed", "completed", "completed"]
    assert again.returncode == 1  # row 1 is still failed
    events = [json.loads(line)["event"] for line in again.stdout.splitlines()]
    assert events.count("ExecutionStarted") == 2


def test_retry_runs_the_canary_on_what_it_retries(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", CANARY)
    (tmp_path / "args.txt").write_text("ok1\nok2\nbad\nok3\n")
    profile = local_profile(tmp_path, slots=1)
    first = runaway("batch", profile, script, "--name", "r", "-A", tmp_path / "args.txt",
                    "--canary", "2", cwd=tmp_path)
    assert first.returncode == 1 and "canary" not in first.stderr, first.stderr
    retried = runaway("retry", "r", cwd=tmp_path)
    assert retried.returncode != 0
    assert "canary: 1 of the first executions failed" in retried.stderr, retried.stderr
    assert "[bad] exit 7" in retried.stderr
