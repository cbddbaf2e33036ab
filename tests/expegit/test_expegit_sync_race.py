"""`expegit sync` when someone pushes between our fetch and our push: the bare remote's
pre-receive hook lands another clone's commit (already sent to the remote under another ref)
on `main` while our push is being received, as a racing push would. The push is refused,
sync fetches, merges and pushes again, and nothing is lost; a conflict that arrives that way,
a push refused by policy and an unrelated remote are one clear error each."""

from __future__ import annotations

from pathlib import Path

from conftest import assert_clean, assert_refused, expegit, git, records, two_clones

RACE_HOOK = """\
#!/bin/sh
# the first push only: someone else's push (refs/heads/incoming) lands first
echo "$(date +%s.%N)" >> "$(dirname "$0")/../pushes"
marker="$(dirname "$0")/../raced"
if [ ! -e "$marker" ]; then
    touch "$marker"
    env -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES \\
        git update-ref refs/heads/main refs/heads/incoming
fi
"""

POLICY_HOOK = """\
#!/bin/sh
echo "$(date +%s.%N)" >> "$(dirname "$0")/../pushes"
echo "main is protected: ask the campaign's owner" >&2
exit 1
"""


def _hook(bare: Path, text: str) -> None:
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(text)
    hook.chmod(0o755)


def _pushes(bare: Path) -> int:
    path = bare / "pushes"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _remote_records(bare: Path) -> dict[str, str]:
    """record.json of every execution on the remote's main: id -> text."""
    names = git(bare, "ls-tree", "-r", "--name-only", "main", "runs").split()
    return {n.split("/")[1]: git(bare, "show", f"main:{n}")
            for n in names if n.endswith("/record.json")}


def _someone_pushes_first(b: Path, bare: Path) -> str:
    """b's commits reach the remote under refs/heads/incoming; the hook moves main there
    during our next push. Returns b's commit."""
    git(b, "push", "-q", "origin", "HEAD:refs/heads/incoming")
    _hook(bare, RACE_HOOK)
    return git(b, "rev-parse", "HEAD").strip()


def test_a_push_raced_by_another_clone_is_retried_and_nothing_is_lost(
        tmp_path: Path, campaign: Path, local: str):
    a, b, bare = two_clones(tmp_path, campaign)
    expegit("run", local, "train.sh", "--param", "lr=0.3", cwd=b)
    theirs = _someone_pushes_first(b, bare)
    expegit("run", local, "train.sh", "--param", "lr=0.1,0.2", cwd=a)
    done = expegit("sync", cwd=a)
    assert "after 2 push attempts" in done.stderr, done.stderr
    assert (bare / "raced").exists() and _pushes(bare) == 2
    # the remote ends with the union: b's commit is in main's history, every record intact
    git(bare, "merge-base", "--is-ancestor", theirs, "main")
    remote = _remote_records(bare)
    assert len(remote) == 3
    expegit("sync", cwd=b)
    for clone in (a, b):
        here = {p.parent.name: p.read_text() for p in (clone / "runs").glob("*/record.json")}
        assert here == remote
        assert_clean(clone)
    assert sorted(r["parameters"]["lr"] for r in records(a).values()) == [0.1, 0.2, 0.3]


def test_a_conflict_that_arrives_with_the_racing_push_is_one_clear_error(
        tmp_path: Path, campaign: Path):
    a, b, bare = two_clones(tmp_path, campaign)
    for clone, text in ((a, "# mine\n"), (b, "# theirs\n")):
        with open(clone / "expegit.yml", "a") as f:
            f.write(text)
        git(clone, "commit", "-q", "-am", "edit settings")
    theirs = _someone_pushes_first(b, bare)
    head = git(a, "rev-parse", "HEAD")
    done = expegit("sync", cwd=a, check=False)
    assert_refused(done, "conflicts in expegit.yml")
    assert "git merge origin/main" in done.stderr and done.stderr.count("error") == 1
    assert git(a, "rev-parse", "HEAD") == head  # left as it was
    assert_clean(a)
    assert git(bare, "rev-parse", "main").strip() == theirs  # nothing of a's pushed


def test_a_push_refused_by_the_remote_is_not_retried(tmp_path: Path, campaign: Path,
                                                      local: str):
    a, _, bare = two_clones(tmp_path, campaign)
    _hook(bare, POLICY_HOOK)
    expegit("run", local, "train.sh", "--param", "lr=0.1", cwd=a)
    done = expegit("sync", cwd=a, check=False)
    assert_refused(done, "pre-receive hook declined")
    assert "main is protected: ask the campaign's owner" in done.stderr
    assert _pushes(bare) == 1  # a refusal by policy is not a race: asked once
    assert_clean(a)


def test_a_remote_of_another_campaign_is_refused(tmp_path: Path, campaign: Path,
                                                 code_repo: Path):
    other = tmp_path / "other"
    expegit("init", str(other), "--code", str(code_repo), cwd=tmp_path)
    bare = tmp_path / "other.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(other, "remote", "add", "origin", str(bare))
    expegit("sync", cwd=other)
    git(campaign, "remote", "add", "other", str(bare))
    head = git(campaign, "rev-parse", "HEAD")
    assert_refused(expegit("sync", "other", cwd=campaign, check=False),
                   "shares no history with this campaign")
    assert git(campaign, "rev-parse", "HEAD") == head
    assert_clean(campaign)
