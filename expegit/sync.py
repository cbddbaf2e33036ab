"""`expegit sync`: fetch, merge, push, and again when someone pushed in between.

Records never share a file, so merging two clones' records never conflicts. A conflict can
only come from a shared file (expegit.yml, the code pointer...): the merge is aborted, the
clone is left as it was, and the error names the files and what to do.
"""

from __future__ import annotations

import random
import time

import attrs
import git

from expegit import catalog, large
from expegit.campaign import Campaign, CampaignError, _git_error, git_errors
from expegit.source import commit_leftovers

ATTEMPTS = 8
# what git says when someone else's push landed first: fetching and merging again fixes it
# (a push refused for any other reason, such as a hook's policy, is not retried)
RACES = ("fetch first", "non-fast-forward", "failed to update ref", "cannot lock ref",
         "stale info", "failed to lock")


@attrs.frozen
class Synced:
    remote: str
    merged: bool  # something came from the remote
    pushes: int  # push attempts (more than 1: someone pushed in between)


def sync(campaign: Campaign, remote: str = "origin", attempts: int = ATTEMPTS) -> Synced:
    repo = campaign.repo
    if remote not in [r.name for r in repo.remotes]:
        raise CampaignError(f"no remote named {remote!r} (add one: git remote add {remote} URL)")
    commit_leftovers(campaign, "sync")
    branch = repo.active_branch.name
    merged = False
    for attempt in range(1, attempts + 1):
        with campaign.writing():
            with git_errors(f"cannot reach {remote}"):
                repo.git.fetch("--quiet", remote)
            upstream = f"{remote}/{branch}"
            if _exists(repo, upstream):
                merged |= _merge(repo, upstream)
            large.merge_branch(campaign)
            try:
                refs = [f"HEAD:refs/heads/{branch}"]
                if campaign.settings.annex and _exists(repo, "git-annex"):
                    refs.append("git-annex:refs/heads/git-annex")
                repo.git.push("--quiet", remote, *refs)
            except git.GitCommandError as error:
                if not _rejected(error) or attempt == attempts:
                    raise CampaignError(f"push to {remote} failed: {_push_error(error)}"
                                        + (f" (after {attempt} attempts)" if attempt > 1
                                           else "")) from None
            else:
                if large.copy_to(campaign, remote):
                    _push_annex_branch(campaign, remote)  # it now says the remote has them
                if merged:
                    catalog.warm(campaign.runs)
                return Synced(remote, merged, attempt)
        time.sleep(random.uniform(0.05, 0.3) * attempt)  # someone pushed: fetch and merge again
    raise AssertionError("unreachable")


def _push_annex_branch(campaign: Campaign, remote: str) -> None:
    """Push where large files are now; merging any git-annex branch pushed in between (its
    log merges by union, so this never conflicts)."""
    repo = campaign.repo
    for attempt in range(ATTEMPTS):
        try:
            repo.git.push("--quiet", remote, "git-annex:refs/heads/git-annex")
            return
        except git.GitCommandError as error:
            if not _rejected(error) or attempt == ATTEMPTS - 1:
                raise CampaignError(f"push to {remote} failed: {_push_error(error)}") from None
        with git_errors(f"cannot reach {remote}"):
            repo.git.fetch("--quiet", remote)
        large.merge_branch(campaign)


def _exists(repo: git.Repo, ref: str) -> bool:
    try:
        repo.git.rev_parse("--verify", "--quiet", ref)
    except git.GitCommandError:
        return False
    return True


def _merge(repo: git.Repo, upstream: str) -> bool:
    """Merge `upstream`; True when it brought something. A conflict aborts and refuses."""
    if repo.git.rev_list("--count", f"HEAD..{upstream}").strip() == "0":
        return False
    try:
        repo.git.merge("--quiet", "--no-edit", "-m", f"expegit sync: merge {upstream}",
                       upstream)
    except git.GitCommandError as error:
        conflicted = repo.git.diff("--name-only", "--diff-filter=U").split()
        try:
            repo.git.merge("--abort")
        except git.GitCommandError:
            pass
        if not conflicted:
            why = _git_error(error)
            if "unrelated histories" in why:
                raise CampaignError(f"{upstream} shares no history with this campaign ({why}): "
                                    "is that remote another campaign?") from None
            raise CampaignError(f"merging {upstream} failed: {why}") from None
        raise CampaignError(
            f"merging {upstream} conflicts in {', '.join(conflicted)} (not records: someone "
            "changed the same file); nothing was changed here. Resolve it by hand: "
            f"`git merge {upstream}`, fix those files, `git commit`, then `expegit sync`"
        ) from None
    return True


def _rejected(error: git.GitCommandError) -> bool:
    """Whether a push was refused because someone pushed in between."""
    text = f"{error.stderr} {error.stdout}"
    return any(w in text for w in RACES)


def _push_error(error: git.GitCommandError) -> str:
    """Why a push failed, in one line: the refused refs and what the remote said (a hook's
    message), rather than git's closing 'failed to push some refs'."""
    said, refused = [], []
    for line in f"{error.stderr}\n{error.stdout}".splitlines():
        line = line.strip().removeprefix("stderr: ").strip("'\" ")
        if line.startswith("remote:") and line[7:].strip():
            said.append(line[7:].strip())
        elif line.startswith("! ["):
            refused.append(line[2:].strip())
    return "; ".join([*refused, *said]) or _git_error(error)
