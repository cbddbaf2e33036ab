"""Fixtures of the expegit tests: a real code repository, a campaign around it, the CLI run
as a process (exit codes and output exactly as a user sees them)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import local_profile

IDENTITY = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.org",
            "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.org"}

TRAIN = """\
#!/usr/bin/env bash
# --lr=X: writes results.json with loss = 2*X and features "X 1"
lr=${1#--lr=}
echo "training lr=$lr on $(hostname) slot $RUNAWAY_HANDLE_ID"
echo "{\\"loss\\": $(python3 -c "print(2*$lr)")}" > results.json
echo "RUNAWAY_FEATURES: $lr 1"
"""

FAIL = """\
#!/usr/bin/env bash
echo "something broke: $*" >&2
exit 3
"""

SLOW = """\
#!/usr/bin/env bash
sleep "${1:-1}"
echo "slept $1" > slept.txt
"""

BIG = """\
#!/usr/bin/env bash
head -c "${1:-2097152}" /dev/urandom > weights.bin
sha256sum weights.bin | cut -d' ' -f1 > weights.sha256
"""


def git(cwd: Path, *args: str, env: dict | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **IDENTITY, **(env or {})})
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout


def write(path: Path, text: str, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)


def expegit(*args: str, cwd: Path, env: dict | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the expegit CLI as a user would."""
    done = subprocess.run([sys.executable, "-m", "expegit", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **IDENTITY, **(env or {})})
    if check:
        assert done.returncode == 0, f"expegit {args}: {done.returncode}\n{done.stderr}"
    return done


def assert_clean(campaign: Path) -> None:
    assert git(campaign, "status", "--porcelain") == "", git(campaign, "status")


def assert_refused(done: subprocess.CompletedProcess[str], words: str) -> None:
    """One clear error: exit 2, the words, no traceback."""
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done.stderr
    assert words in done.stderr, done.stderr


@pytest.fixture
def code_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "code-src"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name, body in (("train.sh", TRAIN), ("fail.sh", FAIL), ("slow.sh", SLOW),
                       ("big.sh", BIG)):
        write(repo / name, body)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


@pytest.fixture
def campaign(tmp_path: Path, code_repo: Path) -> Path:
    folder = tmp_path / "camp"
    expegit("init", str(folder), "--code", str(code_repo), cwd=tmp_path)
    return folder


@pytest.fixture
def local(tmp_path: Path) -> str:
    return str(local_profile(tmp_path, slots=4))


def records(campaign: Path) -> dict[str, dict]:
    import json

    return {p.parent.name: json.loads(p.read_text())
            for p in (campaign / "runs").glob("*/record.json")}


def commits(campaign: Path) -> int:
    return int(git(campaign, "rev-list", "--count", "HEAD"))


def two_clones(tmp_path: Path, campaign: Path) -> tuple[Path, Path, Path]:
    """The campaign pushed to a local bare repository, and a second clone of it: (a, b,
    bare)."""
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    git(campaign, "remote", "add", "origin", str(bare))
    expegit("sync", cwd=campaign)
    expegit("clone", str(bare), "b", cwd=tmp_path)
    return campaign, tmp_path / "b", bare
