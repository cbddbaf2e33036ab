"""init, clone and the code version: real git repositories, the CLI as a user runs it."""

from __future__ import annotations

from pathlib import Path

from conftest import assert_clean, assert_refused, expegit, git, write

from expegit import code
from expegit.campaign import Campaign


def test_init_makes_a_campaign(campaign: Path, code_repo: Path):
    assert (campaign / "code" / "train.sh").is_file()
    assert (campaign / "runs").is_dir() and (campaign / "expegit.yml").is_file()
    assert git(campaign, "config", "-f", ".gitmodules", "submodule.code.url").strip() \
        == str(code_repo)
    assert git(campaign / "code", "rev-parse", "HEAD") == git(code_repo, "rev-parse", "HEAD")
    assert_clean(campaign)


def test_init_refuses_bad_input_and_leaves_nothing(tmp_path: Path, code_repo: Path):
    assert_refused(expegit("init", "nowhere", "--code", str(tmp_path / "missing"),
                           cwd=tmp_path, check=False), "no such repository")
    assert not (tmp_path / "nowhere").exists()
    empty = tmp_path / "empty-code"
    empty.mkdir()
    git(empty, "init", "-q")
    done = expegit("init", "c2", "--code", str(empty), cwd=tmp_path, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "c2").exists()
    busy = tmp_path / "busy"
    write(busy / "notes.txt", "mine")
    assert_refused(expegit("init", str(busy), "--code", str(code_repo), cwd=tmp_path,
                           check=False), "not empty")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_not_a_campaign(tmp_path: Path):
    assert_refused(expegit("status", cwd=tmp_path, check=False), "not an expegit campaign")


def test_clone_gives_a_working_campaign(tmp_path: Path, campaign: Path):
    expegit("clone", str(campaign), "copy", cwd=tmp_path)
    copy = tmp_path / "copy"
    assert (copy / "code" / "train.sh").is_file()
    assert Campaign.open(copy / "runs").root == copy.resolve()
    assert_clean(copy)
    assert_refused(expegit("clone", str(tmp_path / "nope"), "x", cwd=tmp_path, check=False),
                   "no such repository")
    assert not (tmp_path / "x").exists()


def test_commit_made_elsewhere_is_fetched(campaign: Path, code_repo: Path):
    write(code_repo / "train.sh", "#!/bin/sh\necho v2\n")
    git(code_repo, "commit", "-q", "-am", "v2")
    new = git(code_repo, "rev-parse", "HEAD").strip()
    c = Campaign.open(campaign)
    assert code.resolve(c, new[:10]) == new  # not in code/ yet: fetched from its remote
    assert code.resolve(c, None) != new  # code/ itself did not move
    tree = code.export(c, code.CodeVersion(new))
    assert (tree / "train.sh").read_text() == "#!/bin/sh\necho v2\n"


def test_dirty_patch_reproduces_the_code(campaign: Path):
    c = Campaign.open(campaign)
    write(campaign / "code" / "train.sh", "#!/bin/sh\necho changed\n")
    write(campaign / "code" / "sub" / "new.bin", "\x00\x01binary\n", 0o644)
    (campaign / "code" / "fail.sh").unlink()
    staged_before = git(campaign / "code", "diff", "--cached", "--name-only")
    assert sorted(code.dirty(c)) == ["fail.sh", "sub/new.bin", "train.sh"]
    digest = code.store_patch(c, code.make_patch(c))
    assert git(campaign / "code", "diff", "--cached", "--name-only") == staged_before
    tree = code.export(c, code.CodeVersion(code.resolve(c, None), digest))
    ran = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    here = sorted(p.relative_to(campaign / "code").as_posix()
                  for p in (campaign / "code").rglob("*") if p.is_file() and ".git" not in p.parts)
    assert ran == here
    for rel in ran:
        assert (tree / rel).read_bytes() == (campaign / "code" / rel).read_bytes()
    assert (campaign / "patches" / f"{digest}.patch").is_file()
    assert git(campaign, "status", "--porcelain", "patches") == ""  # committed
