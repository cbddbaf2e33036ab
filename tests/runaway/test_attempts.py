"""Retry keeps every attempt's output and code digest, and says when the code changed
(local profile, real processes)."""

from __future__ import annotations

import json

from tests.helpers import local_profile, write_script
from tests.runaway.test_batch import journal, runaway


def test_every_attempt_kept_with_its_digest(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "echo 'first code' >&2; exit 3\n")
    profile = local_profile(tmp_path)
    done = runaway("batch", profile, script, "--name", "a", "--retries", "1", cwd=tmp_path)
    assert done.returncode == 1
    script.write_text("echo 'second code' >&2; exit 4\n")
    retried = runaway("retry", "a", cwd=tmp_path)
    assert retried.returncode == 1
    assert "the code changed since these executions ran" in retried.stderr, retried.stderr
    assert [r[2] for r in journal(tmp_path / "batch/a")] == ["failed"]
    (folder,) = [p for p in (tmp_path / "batch/a").iterdir() if p.is_dir()]
    assert (folder / "stderr").read_text() == "second code\n"  # the latest attempt
    kept = sorted((folder / "attempts").iterdir(), key=lambda p: int(p.name))
    assert [(p / "stderr").read_text() for p in kept] == ["first code\n", "first code\n",
                                                          "second code\n"]
    (row,) = json.loads(runaway("results", "a", "--format", "json", cwd=tmp_path).stdout)
    digests = [h["digest"] for h in row["history"]]
    assert [h["ecode"] for h in row["history"]] == [3, 3, 4]
    assert digests[0] == digests[1] != digests[2] == row["digest"]
    record = json.loads((folder / "runaway.json").read_text())
    assert len(record["attempt_history"]) == 3
