"""The code an execution runs: a commit of `code/`, plus at most one patch of uncommitted
changes, exported as a plain folder the engine archives (content-addressed) and ships.

The tree comes from `git archive` of the commit, so nothing untracked or ignored ever runs;
with `--dirty` the patch (every change against the commit, untracked files included, made in a
throwaway index so the researcher's own index is untouched) is stored once by its SHA-256 under
`patches/` and applied to the exported tree.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import attrs
import git

from expegit.campaign import PATCHES, Campaign, CampaignError, git_errors


@attrs.frozen
class CodeVersion:
    """A commit of the code and the hash of the patch applied on it (None: clean)."""

    commit: str
    patch: str | None = None

    @property
    def key(self) -> str:
        return self.commit if self.patch is None else f"{self.commit}-{self.patch[:16]}"


def resolve(campaign: Campaign, rev: str | None) -> str:
    """The full commit of `rev` in code/ (default HEAD), fetched from the code's remote when
    it is not there yet."""
    repo = campaign.code_repo()
    rev = rev or "HEAD"
    found = _commit(repo, rev)
    if found is None:
        with git_errors(f"--commit {rev}: not in code/, and its remote cannot be reached"):
            repo.git.fetch("--quiet", "origin")
        found = _commit(repo, rev) or _commit(repo, f"origin/{rev}")
        if found is None and len(rev) >= 7:  # a commit no branch points at (yet)
            try:
                repo.git.fetch("--quiet", "origin", rev)
            except git.GitCommandError:
                pass
            found = _commit(repo, rev)
    if found is None:
        raise CampaignError(f"--commit {rev}: no such commit in the code repository or its "
                            "remote")
    return found


def _commit(repo: git.Repo, rev: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", f"{rev}^{{commit}}").strip() or None
    except git.GitCommandError:
        return None


def has_file(campaign: Campaign, commit: str, path: str) -> bool:
    """Whether `path` (relative to code/) exists in `commit`."""
    try:
        campaign.code_repo().git.cat_file("-e", f"{commit}:{path}")
    except git.GitCommandError:
        return False
    return True


def dirty(campaign: Campaign) -> list[str]:
    """Paths of code/ that differ from its HEAD (untracked included)."""
    out = campaign.code_repo().git.status("--porcelain", "--untracked-files=all")
    return [line[3:] for line in out.splitlines() if line.strip()]


def make_patch(campaign: Campaign) -> bytes:
    """Every change of the code's working tree against HEAD, as a binary git diff, made in a
    throwaway index."""
    repo = campaign.code_repo()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        run = _runner(repo.working_tree_dir, env)
        run("read-tree", "HEAD")
        run("add", "-A", ".")
        return run("diff", "--cached", "--binary", "--full-index", "HEAD")


def store_patch(campaign: Campaign, patch: bytes) -> str:
    """Keep `patch` under patches/<sha256>.patch (once) and commit it; returns the hash."""
    digest = hashlib.sha256(patch).hexdigest()
    path = campaign.root / PATCHES / f"{digest}.patch"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(patch)
        tmp.replace(path)
    campaign.commit([f"{PATCHES}/{digest}.patch"], f"expegit: patch {digest[:12]}")
    return digest


def export(campaign: Campaign, version: CodeVersion) -> Path:
    """A folder holding the code exactly at `version`, made once per clone (under
    .git/expegit/trees) and reused by resumes."""
    target = campaign.local / "trees" / version.key
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        repo = campaign.code_repo()
        data = io.BytesIO()
        with git_errors(f"cannot export commit {version.commit[:12]}"):
            repo.archive(data, version.commit, format="tar")
        data.seek(0)
        with tarfile.open(fileobj=data, mode="r:") as tar:
            tar.extractall(tmp, filter="tar")
        if version.patch is not None:
            apply_patch(campaign, version.patch, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another run exported it meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def apply_patch(campaign: Campaign, digest: str, folder: Path) -> None:
    """Apply the stored patch `digest` to a plain folder (no repository needed)."""
    patch = campaign.root / PATCHES / f"{digest}.patch"
    if not patch.is_file():
        raise CampaignError(f"patch {digest[:12]} is not in this clone (expegit sync?)")
    if patch.stat().st_size == 0:
        return
    done = subprocess.run(["git", "apply", "--binary", "--whitespace=nowarn", str(patch)],
                          cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "GIT_DIR": os.devnull})
    if done.returncode != 0:
        raise CampaignError(f"patch {digest[:12]} does not apply: {done.stderr.strip()}")


def _runner(cwd: str | None, env: dict[str, str]):
    def run(*args: str) -> bytes:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True)
        if done.returncode != 0:
            raise CampaignError(f"git {args[0]} in code/ failed: "
                                f"{done.stderr.decode(errors='replace').strip()}")
        return done.stdout
    return run
