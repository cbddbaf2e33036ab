"""The driving commands of the CLI, `expegit run` and `expegit rerun`: the driver loop with
runaway's live progress and signals. A module of its own so that the other commands start
without the engine, asyncssh and rich."""

from __future__ import annotations

import argparse

import anyio

from expegit import code
from expegit import record as records
from expegit.campaign import Campaign, CampaignError
from expegit.run import Plan, drive, new_run, open_run, reruns
from liborchestra import heap
from liborchestra._fields import parse_duration
from liborchestra.driver import Policy
from runaway.interrupts import Interrupts
from runaway.progress import Progress, mode_for
from runaway.render import Renderer
from runaway.sweep_args import sweep_from_args


class _Renderer(Renderer):
    def note(self, text: str) -> None:
        self.console.print(f"expegit: {text}", markup=False, style="dim")

    def error(self, text: str) -> None:
        self.console.print(f"expegit: error: {text}", markup=False, style="bold red")


def drive_command(args: argparse.Namespace) -> int:
    """Run `expegit run` or `expegit rerun` to its end; the exit code."""
    renderer = _Renderer()
    heap.settle()
    return anyio.run(Interrupts(renderer).run, _run if args.command == "run" else _rerun,
                     args, renderer, backend="asyncio")


def _plan(args: argparse.Namespace, profile: str, script: str, rev: str | None,
          dirty: bool) -> Plan:
    return Plan(profile=profile, script=script, rev=rev, dirty=dirty, name=args.name,
                policy=Policy(retries=args.retries, crash_limit=args.crash_limit,
                              canary=args.canary),
                duration=parse_duration(args.duration) if args.duration else None,
                leave=args.leave, send_ignore=args.send_ignore, fetch_ignore=args.fetch_ignore)


async def _run(args: argparse.Namespace, renderer: _Renderer, signals: Interrupts) -> int:
    campaign = Campaign.open(args.campaign)
    if args.resume:
        journal = open_run(campaign, args.name)
    else:
        plan = _plan(args, args.profile, args.script, args.commit, args.dirty)
        journal = new_run(campaign, plan, sweep_from_args(args))
    return await _drive(campaign, journal, renderer, signals, args.json)


async def _drive(campaign: Campaign, journal, renderer: _Renderer, signals: Interrupts,
                 json: bool) -> int:
    views_: list[Progress] = []

    def started(driver, engine) -> None:
        progress = Progress(journal, engine, mode_for(json), renderer.console)
        engine.listeners.append(progress.event)
        views_.append(progress)
        signals.on_first = lambda: (driver.drain(), renderer.note(
            "draining: no new executions; running ones finish and are recorded "
            "(Ctrl-C again: cancel now)"))
        progress.__enter__()

    async def refresh() -> None:
        while True:
            for view in views_:
                view.refresh()
            await anyio.sleep(0.5)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh)
            counts = await drive(campaign, journal, started=started)
            tg.cancel_scope.cancel()
    finally:
        for view in views_:
            view.__exit__(None, None, None)
    name = journal.meta()["name"]
    renderer.note(f"run {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0 if set(counts) <= {"completed"} else 1


async def _rerun(args: argparse.Namespace, renderer: _Renderer, signals: Interrupts) -> int:
    campaign = Campaign.open(args.campaign)
    if args.failed:
        chosen = [r for r in records.all_records(campaign.runs) if r.state in ("failed", "lost")]
    else:
        chosen = [records.read(records.find(campaign.runs, r)) for r in args.runs]
    if not chosen:
        raise CampaignError("nothing to rerun (give RUN ids, or --failed)")
    status = 0
    for again in reruns(chosen):
        rev = args.commit or again.commit
        if again.patch and not args.commit:
            code.export(campaign, code.CodeVersion(again.commit, again.patch))
        plan = _plan(args, args.profile or again.profile, again.script, rev, False)
        journal = new_run(campaign, plan, None, rows=again.rows,
                          patch=None if args.commit else again.patch)
        status = max(status, await _drive(campaign, journal, renderer, signals, args.json))
    return status


