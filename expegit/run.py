"""Starting, resuming and driving an `expegit run`: the checks before anything exists, the
journal (local to this clone, under .git/expegit/journals/NAME), and the shared driver loop.

Every check (script in code/, the commit, a dirty tree, the profile, the sweep) happens before
the journal is made, so bad input leaves nothing behind.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import attrs

from expegit import catalog, code
from expegit.campaign import Campaign, CampaignError
from expegit.source import CampaignSource, RunSettings
from liborchestra import events
from liborchestra.driver import Driver, Policy
from liborchestra.engine import Engine
from liborchestra.federation import load_profiles, open_engine, profile_ref
from liborchestra.journal import Journal, default_name
from liborchestra.params import Sweep


@attrs.frozen
class Plan:
    """What a new run was asked to do."""

    profile: str
    script: str  # as given: relative to code/ (or a path inside it)
    rev: str | None = None
    dirty: bool = False
    name: str | None = None
    policy: Policy = Policy()
    duration: float | None = None
    leave: str = "code"
    send_ignore: str = ".sendignore"
    fetch_ignore: str = ".fetchignore"


def journal_path(campaign: Campaign, name: str) -> Path:
    return campaign.local / "journals" / name / "journal.sqlite"


def script_in_code(campaign: Campaign, script: str) -> str:
    """SCRIPT as a path relative to code/ (given relative to code/, or as a path into it)."""
    given = Path(script)
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, campaign.code / given]
    for path in candidates:
        path = path.resolve()
        if path.is_relative_to(campaign.code.resolve()) and path != campaign.code.resolve():
            return path.relative_to(campaign.code.resolve()).as_posix()
    raise CampaignError(f"{script}: not a path inside code/ (give it relative to code/)")


def version_of(campaign: Campaign, rev: str | None, dirty: bool) -> code.CodeVersion:
    """The code version to run; a dirty code/ is refused unless `dirty` (patch stored)."""
    commit = code.resolve(campaign, rev)
    changed = code.dirty(campaign)
    if changed and not dirty:
        raise CampaignError(f"code/ has uncommitted changes ({len(changed)} path(s), e.g. "
                            f"{changed[0]}); commit them, or run with --dirty to record the patch")
    if changed and rev is not None and commit != code.resolve(campaign, None):
        raise CampaignError("--dirty runs the changes of code/ on its HEAD; they cannot be "
                            f"applied to --commit {rev}")
    if not changed:
        return code.CodeVersion(commit)
    return code.CodeVersion(commit, code.store_patch(campaign, code.make_patch(campaign)))


def new_run(campaign: Campaign, plan: Plan, sweep: Sweep | None,
            rows: Iterable[tuple] | None = None, patch: str | None = None) -> Journal:
    """Check everything, export the code, then make the journal of a new run. `rows` (uuid,
    argv, label, payload) replace the sweep, and `patch` a stored patch on `plan.rev`
    (reruns: the working tree of code/ plays no part)."""
    script = script_in_code(campaign, plan.script)
    profiles = load_profiles(plan.profile)  # fails now, not after the journal exists
    name = plan.name or default_name(Path(script).stem)
    path = journal_path(campaign, name)
    if path.exists():
        raise CampaignError(f"a run named {name!r} exists in this clone; --resume continues "
                            "it, or choose another --name")
    commit = code.resolve(campaign, plan.rev)
    if not code.has_file(campaign, commit, script) and not (
            plan.dirty and (campaign.code / script).is_file()):
        raise CampaignError(f"{script}: not in code/ at commit {commit[:12]}")
    version = code.CodeVersion(commit, patch) if rows is not None else \
        version_of(campaign, plan.rev, plan.dirty)
    tree = code.export(campaign, version)
    if not (tree / script).is_file():
        raise CampaignError(f"{script}: not in code/ at commit {version.commit[:12]}")
    ship = {k: str(v.resolve()) for k, v in sweep.ship.items()} if sweep is not None else {}
    meta = {"name": name, "profile": profile_ref(plan.profile),
            "profile_name": ",".join(p.name for p in profiles),
            "script": script, "commit": version.commit, "patch": version.patch,
            "tree": str(tree), "duration": plan.duration, "leave": plan.leave,
            "send_ignore": plan.send_ignore, "fetch_ignore": plan.fetch_ignore, "ship": ship,
            "created": time.time(), **plan.policy.to_meta()}
    journal = Journal.create(path, meta)
    if rows is None:
        rows = ((str(uuid.uuid4()), p.argv, p.label) for p in sweep)
    journal.add(rows)
    return journal


@attrs.frozen
class Rerun:
    """Records run again together: a run fixes one script, profile, commit and patch."""

    script: str
    profile: str
    commit: str
    patch: str | None
    rows: tuple[tuple, ...]  # (uuid, argv, label, {"rerun_of": record id})


def reruns(chosen: Iterable) -> list[Rerun]:
    """The runs that run `chosen` records again (`expegit rerun`, and the web page's button),
    each row linked to the record it repeats."""
    groups: dict[tuple, list] = {}
    for rec in chosen:
        groups.setdefault((rec.script, rec.profile, rec.commit, rec.patch), []).append(rec)
    return [Rerun(script, profile, commit, patch,
                  tuple((str(uuid.uuid4()), r.arguments, r.label, {"rerun_of": r.id})
                        for r in recs))
            for (script, profile, commit, patch), recs in groups.items()]


def open_run(campaign: Campaign, name: str | None) -> Journal:
    """The journal of the run `name` of this clone (default: the latest)."""
    base = campaign.local / "journals"
    if name is None:
        found = sorted(base.glob("*/journal.sqlite"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise CampaignError("no run to resume in this clone")
        return Journal.open(found[-1])
    path = journal_path(campaign, name)
    if not path.is_file():
        raise CampaignError(f"no run named {name!r} in this clone")
    return Journal.open(path)


def settings_of(meta: dict) -> RunSettings:
    return RunSettings(name=meta["name"], profile=meta["profile"], script=meta["script"],
                       commit=meta["commit"], tree=Path(meta["tree"]), patch=meta.get("patch"),
                       duration=meta.get("duration"),
                       ship=tuple((k, Path(v)) for k, v in (meta.get("ship") or {}).items()))


async def drive(campaign: Campaign, journal: Journal,
                listeners: Iterable[events.Listener] = (),
                started: Callable[[Driver, Engine], object] | None = None) -> dict[str, int]:
    """Run (or resume) the journal's executions through the driver; returns its counts.
    `started` is told the driver and engine (for progress views and signals)."""
    meta = journal.meta()
    with journal.lease():
        settings = settings_of(meta)
        if not settings.tree.is_dir():  # a resume after the exported tree was cleaned
            code.export(campaign, code.CodeVersion(settings.commit, settings.patch))
        async with open_engine(str(meta["profile"]), leave=str(meta["leave"]),
                          send_ignore=str(meta["send_ignore"]),
                          fetch_ignore=str(meta["fetch_ignore"]),
                          listeners=listeners) as engine:
            driver = Driver(engine, journal, CampaignSource(campaign, settings),
                            Policy.from_meta(meta))
            if started is not None:
                started(driver, engine)
            await driver.run()
    await anyio.to_thread.run_sync(catalog.warm, campaign.runs)
    return journal.counts()


