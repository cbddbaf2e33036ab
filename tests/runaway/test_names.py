"""Finding batches: names printed, `list`, `status` of the latest, resume by name alone,
refusals of a different script or sweep on resume, names that are not paths; and the sweep
options' product, warnings and dry run (local profile, real processes)."""

from __future__ import annotations

import sqlite3

from tests.helpers import local_profile, write_script
from tests.runaway.test_batch import journal, runaway

ECHO = "#!/usr/bin/env bash\necho \"args: $*\"\n"


def test_name_printed_listed_and_status_of_the_latest(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", ECHO)
    profile = local_profile(tmp_path)
    first = runaway("batch", profile, script, "--", "{1;2}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (name,) = [p.name for p in (tmp_path / "batch").iterdir()]
    assert f"batch {name}: 2 executions" in first.stderr  # at start
    assert f"batch {name} summary" in first.stderr  # and in the summary
    second = runaway("batch", profile, script, "--name", "later", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    listed = runaway("list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert name[:12] in listed.stdout and "later" in listed.stdout
    assert "completed" in listed.stdout
    status = runaway("status", cwd=tmp_path)
    assert status.returncode == 0 and status.stdout.startswith("later: 1 executions")


def test_resume_by_name_alone_and_refusals(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", ECHO)
    other = write_script(tmp_path / "code", "other.sh", ECHO)
    profile = local_profile(tmp_path)
    db_path = tmp_path / "batch/r/journal.sqlite"
    done = runaway("batch", profile, script, "--name", "r", "--", "{1;2;3}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    db = sqlite3.connect(db_path)
    with db:
        db.execute("UPDATE executions SET state = 'queued' WHERE seq = 3")
    db.close()
    for args, words in ((["batch", profile, other], "script"),
                        (["batch", profile, script, "-x", "2"], "sweep"),
                        (["batch", "other-profile"], "profile")):
        refused = runaway(*args, "--resume", "--name", "r", cwd=tmp_path)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert words in refused.stderr and "differ" not in refused.stdout
    assert "other.sh" in runaway("batch", profile, other, "--resume", "--name", "r",
                                 cwd=tmp_path).stderr
    assert len(list((tmp_path / "batch").iterdir())) == 1  # nothing new was made
    resumed = runaway("batch", "--resume", "--name", "r", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 1 queued to run" in resumed.stderr
    assert [r[2] for r in journal(tmp_path / "batch/r")] == ["completed"] * 3


def test_names_are_not_paths(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", ECHO)
    for name in ("../escape", "a/b", ".hidden", ""):
        done = runaway("batch", local_profile(tmp_path), script, "--name", name, cwd=tmp_path)
        assert done.returncode == 2 and "not a path" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "escape").exists() and not (tmp_path / "batch").exists()


def test_param_and_template_are_a_product(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", ECHO)
    done = runaway("batch", local_profile(tmp_path), script, "--name", "p", "--param",
                   "lr=0.1,0.01", "--", "--bs={1;2}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [r[1] for r in journal(tmp_path / "batch/p")] == [
        "--lr=0.1 --bs=1", "--lr=0.1 --bs=2", "--lr=0.01 --bs=1", "--lr=0.01 --bs=2"]


def test_dry_run_and_comma_warning(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", ECHO)
    done = runaway("batch", local_profile(tmp_path), script, "--dry-run", "-x", "2", "--",
                   "--lr={0.1,0.01} --bs={1;2}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["1\t--lr=0.1,0.01 --bs=1", "2\t--lr=0.1,0.01 --bs=1"]
    assert lines[-1].startswith("# 4 executions")
    assert "separated by `;`" in done.stderr and "{0.1;0.01}" in done.stderr
    assert not (tmp_path / "batch").exists()


def test_stray_arguments_and_profile_typo_get_hints(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", ECHO)
    local_profile(tmp_path)  # ./profiles/loc.yml
    stray = runaway("exec", "local", script, "--lr", "0.1", cwd=tmp_path)
    assert stray.returncode == 2 and "after `--`" in stray.stderr
    typo = runaway("exec", "lcal", script, cwd=tmp_path)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "did you mean 'local'?" in typo.stderr and "loc" in typo.stderr
