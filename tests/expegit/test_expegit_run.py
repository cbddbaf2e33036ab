"""`expegit run` on the real local scheduler: records, group commits, bad input, two runs at
once, SIGKILL mid-recording and --resume, rerun, remove, export, update-code."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import (
    IDENTITY,
    assert_clean,
    assert_refused,
    commits,
    expegit,
    git,
    records,
    write,
)

from tests.helpers import write_profile


def test_run_records_every_execution(campaign: Path, local: str):
    before = commits(campaign)
    head = git(campaign / "code", "rev-parse", "HEAD").strip()
    expegit("run", local, "train.sh", "--param", "lr=0.1,0.2,0.3", "-x", "10", cwd=campaign)
    recs = records(campaign)
    assert len(recs) == 30
    assert commits(campaign) - before <= 10  # group commits, never one per execution
    for rec in recs.values():
        assert rec["commit"] == head and rec["patch"] is None
        assert rec["state"] == "completed" and rec["exit_code"] == 0
        lr = rec["parameters"]["lr"]
        assert rec["arguments"] == [f"--lr={lr}"]
        assert rec["metrics"] == {"loss": 2 * lr} and rec["features"] == [lr, 1.0]
        assert rec["slot"] in {"0", "1", "2", "3"} and rec["node"]
        assert rec["submitted"] <= rec["started"] <= rec["ended"] and rec["duration"] > 0
        assert "@" in rec["by"] and rec["tool"]
        folder = campaign / "runs" / rec["id"]
        assert f"slot {rec['slot']}" in (folder / "stdout").read_text()
        assert (folder / "results.json").is_file()
    assert sorted(r["parameters"]["lr"] for r in recs.values()) == [0.1] * 10 + [0.2] * 10 \
        + [0.3] * 10
    assert_clean(campaign)


def test_failures_status_export(campaign: Path, local: str):
    expegit("run", local, "train.sh", "--param", "lr=0.5", cwd=campaign)
    done = expegit("run", local, "fail.sh", "--", "oops", cwd=campaign, check=False)
    assert done.returncode == 1
    status = expegit("status", cwd=campaign).stdout
    assert "2 execution(s)" in status and "failed" in status and "completed" in status
    assert "exit 3: something broke: oops" in status
    rows = list(csv.DictReader(io.StringIO(expegit("export", cwd=campaign).stdout)))
    assert sorted(r["state"] for r in rows) == ["completed", "failed"]
    ok = next(r for r in rows if r["state"] == "completed")
    assert ok["param.lr"] == "0.5" and ok["metric.loss"] == "1.0"
    data = json.loads(expegit("export", "--format", "json", cwd=campaign).stdout)
    assert {d["id"] for d in data} == {r["id"] for r in rows}
    failed = next(d for d in data if d["state"] == "failed")
    shown = expegit("show", failed["id"][:8], cwd=campaign).stdout
    assert json.loads(shown[:shown.rindex("}") + 1])["exit_code"] == 3
    # rerun --failed: a new record linked to the old one, same arguments
    assert expegit("rerun", "--failed", cwd=campaign, check=False).returncode == 1
    again = [r for r in records(campaign).values() if r["rerun_of"] == failed["id"]]
    assert len(again) == 1 and again[0]["arguments"] == ["oops"]
    expegit("remove", failed["id"], again[0]["id"], cwd=campaign)
    assert sorted(r["state"] for r in records(campaign).values()) == ["completed"]
    assert_clean(campaign)


def test_bad_input_is_refused_and_leaves_nothing(campaign: Path, local: str, tmp_path: Path):
    before = (commits(campaign), git(campaign, "status", "--porcelain"))

    def unchanged():
        assert (commits(campaign), git(campaign, "status", "--porcelain")) == before
        assert not list((campaign / ".git" / "expegit").glob("journals/*"))

    assert_refused(expegit("run", local, "nope.sh", cwd=campaign, check=False),
                   "not in code/ at commit")
    assert_refused(expegit("run", local, str(tmp_path / "x.sh"), cwd=campaign, check=False),
                   "not a path inside code/")
    assert_refused(expegit("run", local, "train.sh", "--commit", "deadbeef", cwd=campaign,
                           check=False), "no such commit")
    assert_refused(expegit("run", "no-such-profile", "train.sh", cwd=campaign, check=False),
                   "no-such-profile")
    assert_refused(expegit("run", local, "train.sh", "--", "--a={1;", cwd=campaign,
                           check=False), "")
    unchanged()
    write(campaign / "code" / "train.sh", "#!/bin/sh\necho edited\n")
    assert_refused(expegit("run", local, "train.sh", cwd=campaign, check=False),
                   "uncommitted changes")
    git(campaign / "code", "checkout", "train.sh")
    unchanged()


def test_dirty_run_records_the_patch(campaign: Path, local: str):
    write(campaign / "code" / "train.sh", "#!/bin/sh\necho patched-code\n")
    expegit("run", local, "train.sh", "--dirty", cwd=campaign)
    (rec,) = records(campaign).values()
    assert rec["patch"] and (campaign / "patches" / f"{rec['patch']}.patch").is_file()
    assert (campaign / "runs" / rec["id"] / "stdout").read_text() == "patched-code\n"
    assert git(campaign, "status", "--porcelain", "runs", "patches") == ""


def test_run_at_another_commit_and_update_code(campaign: Path, code_repo: Path, local: str):
    old = git(campaign / "code", "rev-parse", "HEAD").strip()
    write(code_repo / "train.sh", "#!/bin/sh\necho version-two\n")
    git(code_repo, "commit", "-q", "-am", "v2")
    new = git(code_repo, "rev-parse", "HEAD").strip()
    expegit("run", local, "train.sh", "--commit", new[:8], cwd=campaign)
    (rec,) = records(campaign).values()
    assert rec["commit"] == new
    assert (campaign / "runs" / rec["id"] / "stdout").read_text() == "version-two\n"
    assert git(campaign / "code", "rev-parse", "HEAD").strip() == old
    expegit("update-code", new, cwd=campaign)
    assert git(campaign, "ls-tree", "HEAD", "code").split()[2] == new
    assert_clean(campaign)


def _start(campaign: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "expegit", *args], cwd=campaign,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **IDENTITY, **(env or {})})


def test_two_runs_at_once_in_one_folder(campaign: Path, local: str):
    procs = [_start(campaign, "run", local, "train.sh", "--name", f"r{i}", "--param",
                    f"lr={','.join(str(i + k / 10) for k in range(10))}", "-x", "3")
             for i in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "index.lock" not in err
    recs = records(campaign)
    assert len(recs) == 60
    assert sorted(r["run"] for r in recs.values()) == ["r0"] * 30 + ["r1"] * 30
    assert_clean(campaign)


def _uncommitted_records(campaign: Path) -> list[str]:
    out = git(campaign, "status", "--porcelain", "--untracked-files=all", "runs")
    return [line for line in out.splitlines() if line.endswith("record.json")]


def test_sigkill_mid_recording_then_resume(campaign: Path, local: str):
    # a wide group-commit window, so the kill lands after results are written, before commit
    proc = _start(campaign, "run", local, "slow.sh", "--name", "k", "--json", "--",
                  "{0.2;0.3;0.4;0.5;0.6;0.7;0.8;0.9;1.0;1.1;1.2;1.3}",
                  env={"EXPEGIT_COMMIT_DELAY": "30"})
    deadline = time.monotonic() + 60
    while len(_uncommitted_records(campaign)) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pending = _uncommitted_records(campaign)
    assert pending and commits(campaign) == 1  # nothing of the run committed yet
    assert git(campaign, "fsck", "--no-progress") is not None  # a valid repository
    expegit("run", local, "slow.sh", "--resume", "--name", "k", cwd=campaign)
    recs = records(campaign)
    assert len(recs) == 12
    assert sorted(float(r["arguments"][0]) for r in recs.values()) == \
        [round(0.2 + k / 10, 1) for k in range(12)]
    assert all((campaign / "runs" / r["id"] / "slept.txt").is_file() for r in recs.values())
    log = git(campaign, "log", "--name-only", "--format=", "--", "runs")
    written = [line for line in log.splitlines() if line.endswith("record.json")]
    assert len(written) == len(set(written)) == 12  # each record committed once
    assert_clean(campaign)


def test_run_over_two_clusters(campaign: Path, local: str, tmp_path: Path):
    """`expegit run a,b SCRIPT`: the same PROFILE list as runaway batch; each record names
    the cluster its execution ran on."""
    other = write_profile(tmp_path / "other", "loc2", {
        "scheduler": {"kind": "local"}, "slots": 2, "directory": str(tmp_path / "remote2")})
    expegit("run", f"{local},{other}", "train.sh", "--param", "lr=0.1,0.2", "-x", "8",
            cwd=campaign)
    recs = records(campaign)
    assert len(recs) == 16
    assert {r["node"].split("/")[0] for r in recs.values()} == {"loc", "loc2"}
    assert_clean(campaign)
