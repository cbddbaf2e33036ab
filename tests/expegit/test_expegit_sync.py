"""`expegit sync` against a local bare repository: records merge by union; a conflict in a
shared file is refused, leaving the clone as it was."""

from __future__ import annotations

import marshal
from pathlib import Path

from conftest import assert_clean, assert_refused, expegit, git, records, two_clones

from expegit.catalog import CACHE


def test_records_merge_by_union(tmp_path: Path, campaign: Path, local: str):
    a, b, _ = two_clones(tmp_path, campaign)
    expegit("run", local, "train.sh", "--param", "lr=0.1,0.2", cwd=a)
    expegit("run", local, "train.sh", "--param", "lr=0.3", cwd=b)
    expegit("sync", cwd=a)
    expegit("sync", cwd=b)  # b merges a's records, then pushes
    expegit("sync", cwd=a)
    assert set(records(a)) == set(records(b)) and len(records(a)) == 3
    for clone in (a, b):  # the catalog's cache is current: the next status parses nothing
        assert set(_cached(clone)) == set(records(clone))
    assert_clean(a)
    assert_clean(b)
    expegit("clone", str(tmp_path / "remote.git"), "c", cwd=tmp_path)
    assert set(_cached(tmp_path / "c")) == set(records(a))


def _cached(clone: Path) -> dict:
    tag, entries = marshal.loads((clone / ".git" / "expegit" / CACHE).read_bytes())
    return entries


def test_conflict_outside_records_is_refused(tmp_path: Path, campaign: Path):
    a, b, _ = two_clones(tmp_path, campaign)
    for clone, text in ((a, "# mine\n"), (b, "# theirs\n")):
        with open(clone / "expegit.yml", "a") as f:
            f.write(text)
        git(clone, "commit", "-q", "-am", "edit settings")
    expegit("sync", cwd=a)
    head = git(b, "rev-parse", "HEAD")
    done = expegit("sync", cwd=b, check=False)
    assert_refused(done, "conflicts in expegit.yml")
    assert "git merge origin/main" in done.stderr
    assert git(b, "rev-parse", "HEAD") == head
    assert_clean(b)


def test_unknown_remote_is_refused(campaign: Path):
    assert_refused(expegit("sync", "nowhere", cwd=campaign, check=False), "no remote named")
