"""`parasearch --campaign DIR`: each trial is an execution of an expegit campaign."""

from __future__ import annotations

import json

from tests.expegit.conftest import IDENTITY, assert_clean, expegit, git, write
from tests.helpers import local_profile
from tests.parasearch.test_search_cli import BRANIN, parasearch


def test_a_search_recorded_in_a_campaign_at_its_code_commit(tmp_path):
    repo = tmp_path / "code-src"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo / "branin.sh", BRANIN)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "branin")
    camp = tmp_path / "camp"
    expegit("init", str(camp), "--code", str(repo), cwd=tmp_path)
    head = git(camp / "code", "rev-parse", "HEAD").strip()
    done = parasearch("--n", 6, "--name", "c", "--campaign", camp, local_profile(tmp_path),
                      "branin.sh", "--", "--x~uniform(-5, 10)", "--y~uniform(0, 15)",
                      cwd=tmp_path, env={"LOG": str(tmp_path / "log.txt"), **IDENTITY})
    assert done.returncode == 0, done.stderr
    trials = json.loads(parasearch("export", "c", "--format", "json", cwd=tmp_path).stdout)
    assert len(trials) == 6
    records = {p.parent.name: json.loads(p.read_text()) for p in camp.glob("runs/*/record.json")}
    assert set(records) == {t["uuid"] for t in trials}
    for t in trials:
        record = records[t["uuid"]]
        assert record["commit"] == head and record["state"] == "completed"
        assert record["parameters"] == t["params"]
        assert record["features"][0] == t["objective"]
    assert_clean(camp)
    commits = [line for line in git(camp, "log", "--oneline").splitlines() if ": c: " in line]
    assert 1 <= len(commits) < 6  # group commits, not one per trial
    dirty = camp / "code" / "branin.sh"
    dirty.write_text(dirty.read_text() + "# edited\n")
    refused = parasearch("--n", 2, "--name", "d", "--campaign", camp, local_profile(tmp_path),
                         "branin.sh", "--", "--x~uniform(-5, 10)", cwd=tmp_path)
    assert refused.returncode == 2 and "uncommitted changes" in refused.stderr
    assert "Traceback" not in refused.stderr
