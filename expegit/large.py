"""Large result files: kept out of git history by git-annex, which stores them by content hash
and moves them between clones over plain SSH (any git remote whose host has git-annex).

Git holds a pointer (a symlink into the annex); `expegit sync` copies the content to the
remote, `expegit get RUN [PATH]` brings it into another clone.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from expegit.campaign import Campaign, CampaignError, git_errors
from expegit.record import RECORD


def large_files(folder: Path, threshold: int, globs: tuple[str, ...]) -> list[str]:
    """Paths (relative to `folder`) of files above `threshold` bytes or matching a glob (by
    name or by relative path); the record file never is."""
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel == RECORD or path.is_symlink() or name.startswith(".orchestra"):
                continue
            if path.stat().st_size > threshold or any(
                    fnmatch.fnmatchcase(rel, g) or fnmatch.fnmatchcase(name, g) for g in globs):
                out.append(rel)
    return sorted(out)


def copy_to(campaign: Campaign, remote: str, paths: list[str] | None = None) -> bool:
    """Send the content of annexed files the remote lacks (all of runs/ by default); False
    when there was nothing to send."""
    if not campaign.settings.annex:
        return False
    here = campaign.repo.git.annex("find", "--in", "here", "--", *(paths or ["runs"]))
    if not here.strip():
        return False  # nothing annexed here: the remote is not even asked
    with git_errors(f"cannot send large files to {remote} (its host needs git-annex, and "
                    "ssh must reach it as configured in ~/.ssh/config or git config "
                    f"remote.{remote}.annex-ssh-options)"):
        campaign.repo.git.annex("copy", "--quiet", "--to", remote, "--not", "--in", remote,
                                "--", *(paths or ["runs"]))
    return True


def get(campaign: Campaign, paths: list[str]) -> list[str]:
    """Fetch the content of annexed files under `paths` from whichever remote has it;
    returns the files now present."""
    if not campaign.settings.annex:
        raise CampaignError("this campaign keeps no large files in git-annex")
    with campaign.writing(), git_errors("cannot get large files"):
        campaign.repo.git.annex("get", "--quiet", "--", *paths)
        listed = campaign.repo.git.annex("find", "--", *paths)
    return [line for line in listed.splitlines() if line.strip()]


def merge_branch(campaign: Campaign) -> None:
    """Fold remote git-annex branches (where content is) into ours."""
    if campaign.settings.annex:
        with git_errors("cannot merge the git-annex branch"):
            campaign.repo.git.annex("merge", "--quiet")
