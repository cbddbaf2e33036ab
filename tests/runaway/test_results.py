"""`runaway results`, the record file of each execution folder, and `runaway exec`'s record
(local profile, real `python -m runaway` processes)."""

from __future__ import annotations

import csv
import io
import json

from tests.helpers import local_profile, write_script
from tests.runaway.test_batch import runaway

TRAIN = """\
#!/usr/bin/env bash
# train.sh --lr=X --bs Y: fails for bs 64, otherwise writes results.json or features
case "$*" in *64*) echo "out of memory" >&2; exit 3;; esac
if [ "$3" = 32 ]; then
  printf '{"objective": %s, "metrics": {"acc": 0.5}}' "${1#--lr=}" > results.json
else
  echo "RUNAWAY_FEATURES: 7 8"
fi
"""


def _batch(tmp, *extra):
    script = write_script(tmp / "code", "train.sh", TRAIN)
    done = runaway("batch", local_profile(tmp), script, "--name", "res", *extra,
                   "--", "--lr={0.1;0.01} --bs {32;64;16}", cwd=tmp)
    return done


def test_results_table_csv_json_sort_and_filter(tmp_path):
    done = _batch(tmp_path)
    assert done.returncode == 1  # two executions failed
    as_json = runaway("results", "res", "--format", "json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [r["parameters"] for r in rows] == [
        {"lr": lr, "bs": bs} for lr in (0.1, 0.01) for bs in (32, 64, 16)]
    assert [r["state"] for r in rows] == ["completed", "failed", "completed"] * 2
    assert rows[0]["objective"] == 0.1 and rows[0]["metrics"] == {"acc": 0.5}
    assert rows[2]["objective"] == 7 and rows[2]["metrics"] == {"feature_1": 8}
    assert rows[1]["ecode"] == 3 and rows[1]["node"] and rows[1]["digest"]
    assert all(r["duration"] is not None and r["duration"] >= 0 for r in rows)
    assert rows[0]["started"] > 1_600_000_000  # wall clock, not a monotonic clock

    failed = runaway("results", "res", "--format", "csv", "--filter", "state=failed",
                     "--sort=-lr", cwd=tmp_path)
    assert failed.returncode == 0, failed.stderr
    table = list(csv.DictReader(io.StringIO(failed.stdout)))
    assert [(r["lr"], r["bs"], r["ecode"]) for r in table] == [("0.1", "64", "3"),
                                                              ("0.01", "64", "3")]
    by_objective = runaway("results", "res", "--format", "csv", "--sort", "objective",
                           cwd=tmp_path)
    objectives = [r["objective"] for r in csv.DictReader(io.StringIO(by_objective.stdout))]
    assert objectives == ["0.01", "0.1", "7.0", "7.0", "", ""]  # missing ones last

    shown = runaway("results", cwd=tmp_path)  # no name: the latest batch
    assert shown.returncode == 0, shown.stderr
    assert "res: 6 of 6 executions" in shown.stdout and "lr" in shown.stdout


def test_results_bad_column_is_one_clear_error(tmp_path):
    _batch(tmp_path)
    for option in (["--filter", "nope=1"], ["--sort", "nope"], ["--filter", "state"]):
        done = runaway("results", "res", *option, cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.startswith("runaway: error:") and "nope" in done.stderr \
            or "COLUMN=VALUE" in done.stderr
    done = runaway("results", "missing", cwd=tmp_path)
    assert done.returncode == 2 and "no batch named 'missing'" in done.stderr


def test_each_execution_folder_has_its_record(tmp_path):
    _batch(tmp_path)
    records = [json.loads(p.read_text()) for p in (tmp_path / "batch/res").glob("*/runaway.json")]
    assert len(records) == 6
    one = next(r for r in records if r["arguments"] == ["--lr=0.01", "--bs", "64"])
    assert one["parameters"] == {"lr": 0.01, "bs": 64}
    assert one["state"] == "failed" and one["ecode"] == 3
    assert len(one["digest"]) == 64 and one["script"].endswith("train.sh")


def test_post_command_failure_is_in_the_row_and_the_summary(tmp_path):
    done = _batch(tmp_path, "-p", 'test "$RUNAWAY_ECODE" = 0 || exit 5')
    assert done.returncode == 1
    assert "post-command failed" in done.stderr
    rows = json.loads(runaway("results", "res", "--format", "json", cwd=tmp_path).stdout)
    assert [r["post"] for r in rows] == [0, 5, 0] * 2
    status = runaway("status", "res", cwd=tmp_path)
    assert "post-command failed for 2 execution(s)" in status.stdout


def test_exec_records_arguments_and_code_digest(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "echo hi\n")
    done = runaway("exec", local_profile(tmp_path), script, "-o", tmp_path / "out", "--",
                   "--lr=0.1", "it's", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out/runaway.json").read_text())
    assert record["arguments"] == ["--lr=0.1", "it's"]
    assert record["parameters"] == {"lr": 0.1, "arg1": "it's"}
    assert len(record["digest"]) == 64 and record["state"] == "completed"
    assert record["started"] > 1_600_000_000
