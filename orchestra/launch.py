"""Runs the server drives itself: batches, searches and campaign runs started from the launch
form, and batches and campaigns retried from their page, each in a task of the server's own
event loop.

A form becomes the very argv the command line would get, parsed by runaway's or parasearch's
own parser and created by their own `create_batch` and `create_search`, so a batch launched
here is the batch `runaway batch` would have made; it is then driven by liborchestra's Driver,
the loop every tool shares.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shlex
from pathlib import Path

import anyio
import anyio.abc
import attrs

from liborchestra._fields import parse_duration
from liborchestra.batch import BatchSettings, SweepSource, keep_attempt
from liborchestra.driver import Driver, Policy
from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError
from liborchestra.federation import open_engine
from liborchestra.journal import Journal, default_name

log = logging.getLogger(__name__)


class LaunchError(OrchestraError):
    """The form cannot start a run; the message says why (shown on the form)."""


@attrs.define
class Run:
    """A run this server drives: its journal, its driver once made, how it ended."""

    path: Path
    kind: str
    driver: Driver | None = None
    campaign: object = None  # an expegit Campaign, for a campaign's run
    done: bool = False
    error: str | None = None


def _parsed(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse's answer, with its complaint as a LaunchError instead of an exit."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(argv)
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        raise LaunchError(lines[-1] if lines else "bad arguments") from None


def _required(fields: dict[str, str], *names: str) -> None:
    for name in names:
        if not fields.get(name, "").strip():
            raise LaunchError(f"{name}: required")


def batch_argv(fields: dict[str, str], folder: Path) -> list[str]:
    """The `runaway batch` command line of a launch form."""
    _required(fields, "profile", "script")
    name = fields.get("name", "").strip() or default_name(Path(fields["script"]).stem)
    argv = ["batch", fields["profile"].strip(), fields["script"].strip(), "--name", name,
            "-o", str(folder / "batch" / name)]
    for line in fields.get("params", "").splitlines():
        if line.strip():
            argv += ["--param", line.strip()]
    if fields.get("repeats", "").strip():
        argv += ["--repeats", fields["repeats"].strip()]
    if fields.get("code", "").strip():
        argv += ["--code", fields["code"].strip()]
    template = fields.get("template", "").strip()
    return argv + (["--", template] if template else [])


def search_argv(fields: dict[str, str], folder: Path) -> list[str]:
    """The `parasearch` command line of a launch form (priors as in a shell)."""
    _required(fields, "profile", "script", "priors")
    name = fields.get("name", "").strip() or default_name(Path(fields["script"]).stem)
    argv = [fields["profile"].strip(), fields["script"].strip(), "--name", name,
            "-o", str(folder / "search" / name), "--algo", fields.get("algo", "random") or
            "random", "--n", fields.get("n", "20").strip() or "20"]
    if fields.get("parallel", "").strip():
        argv += ["--parallel", fields["parallel"].strip()]
    if fields.get("maximize"):
        argv.append("--maximize")
    if fields.get("code", "").strip():
        argv += ["--code", fields["code"].strip()]
    try:
        priors = shlex.split(fields["priors"])
    except ValueError as error:
        raise LaunchError(f"priors: {error}") from None
    return [*argv, "--", *priors]


def campaign_argv(fields: dict[str, str]) -> list[str]:
    """The `expegit run` command line of a launch form (script relative to code/)."""
    _required(fields, "profile", "script")
    argv = ["run", fields["profile"].strip(), fields["script"].strip()]
    for flag, key in (("--name", "name"), ("--commit", "commit"), ("--repeats", "repeats")):
        if fields.get(key, "").strip():
            argv += [flag, fields[key].strip()]
    for line in fields.get("params", "").splitlines():
        if line.strip():
            argv += ["--param", line.strip()]
    template = fields.get("template", "").strip()
    return argv + (["--", template] if template else [])


class Runs:
    """The runs this server drives, in one task group owned by the server's lifespan."""

    def __init__(self, tg: anyio.abc.TaskGroup, home: Path) -> None:
        self.tg, self.home = tg, home.resolve()
        self.runs: dict[Path, Run] = {}

    def get(self, path: Path) -> Run | None:
        return self.runs.get(path.resolve())

    def driving(self, path: Path) -> bool:
        run = self.get(path)
        return run is not None and not run.done

    # -- starting ------------------------------------------------------------------------------
    # A run is made (its journal: 100,000 rows take seconds; a campaign's code exported) in a
    # worker thread, so the server answers other pages meanwhile; it is started in the loop.

    async def start_batch(self, fields: dict[str, str]) -> Path:
        return self._start(await anyio.to_thread.run_sync(self._make_batch, fields), "batch")

    async def start_search(self, fields: dict[str, str]) -> Path:
        return self._start(await anyio.to_thread.run_sync(self._make_search, fields),
                           "search")

    async def start_campaign(self, fields: dict[str, str], root: Path) -> Path:
        journal, campaign = await anyio.to_thread.run_sync(self._make_campaign, fields, root)
        return self._start(journal, "campaign", campaign)

    async def rerun_failed(self, root: Path) -> int:
        """`expegit rerun --failed`, driven here; returns how many executions."""
        made, count = await anyio.to_thread.run_sync(self._make_reruns, root)
        for journal, campaign in made:
            self._start(journal, "campaign", campaign)
        return count

    async def retry(self, path: Path, states: list[str]) -> int:
        """`runaway retry`, driven here; returns how many executions."""
        if self.driving(path):
            raise LaunchError("this batch is running: wait for it, or cancel it")
        journal, count = await anyio.to_thread.run_sync(self._requeue, path, states)
        self._start(journal, "batch")
        return count

    def _make_batch(self, fields: dict[str, str]) -> Journal:
        from runaway import batch_cmd
        from runaway.cli import parser

        argv = batch_argv(fields, self.home)
        cut = argv.index("--") if "--" in argv else len(argv)
        args = _parsed(parser(), argv[:cut])
        args.template = [*args.template, *argv[cut + 1:]]
        journal, _ = batch_cmd.create_batch(args)
        return journal

    def _make_search(self, fields: dict[str, str]) -> Journal:
        from parasearch import cli
        from parasearch.samplers.base import SamplerError
        from parasearch.space import SpaceError

        argv = search_argv(fields, self.home)
        cut = argv.index("--")
        args = _parsed(cli.search_parser(), argv[:cut])
        args.args = argv[cut + 1:]
        try:
            journal, store = cli.create_search(args)
        except (SpaceError, SamplerError) as error:  # a bad prior, or an algorithm refusing it
            raise LaunchError(str(error)) from None
        store.close()
        return journal

    def _make_campaign(self, fields: dict[str, str], root: Path) -> tuple[Journal, object]:
        """`expegit run` in the campaign at `root`: its own parser, checks and `new_run`."""
        from expegit.campaign import Campaign
        from expegit.cli import parser
        from expegit.run import Plan, new_run
        from runaway.sweep_args import sweep_from_args

        argv = campaign_argv(fields)
        cut = argv.index("--") if "--" in argv else len(argv)
        args = _parsed(parser(), argv[:cut])
        args.template = [*args.template, *argv[cut + 1:]]
        campaign = Campaign.open(root)
        plan = Plan(profile=args.profile, script=args.script, rev=args.commit, name=args.name)
        return new_run(campaign, plan, sweep_from_args(args)), campaign

    def _make_reruns(self, root: Path) -> tuple[list[tuple[Journal, object]], int]:
        """`expegit rerun --failed`: the failed and lost records, each of expegit's reruns a
        new run (its rows linked by `rerun_of`)."""
        from expegit.campaign import Campaign
        from expegit.code import CodeVersion, export
        from expegit.record import all_records
        from expegit.run import Plan, new_run, reruns

        campaign = Campaign.open(root)
        again = reruns(r for r in all_records(campaign.runs) if r.state in ("failed", "lost"))
        if not again:
            raise LaunchError("no failed or lost execution to run again")
        made = []
        for run in again:
            if run.patch:
                export(campaign, CodeVersion(run.commit, run.patch))
            plan = Plan(profile=run.profile, script=run.script, rev=run.commit)
            made.append((new_run(campaign, plan, None, rows=run.rows, patch=run.patch),
                         campaign))
        return made, sum(len(run.rows) for run in again)

    def under(self, folder: Path) -> list[Run]:
        """The runs driven here now whose journal lies under `folder`."""
        base = folder.resolve()
        return [r for r in self.runs.values() if not r.done and r.path.is_relative_to(base)]

    def _requeue(self, path: Path, states: list[str]) -> tuple[Journal, int]:
        """`runaway retry`'s library calls: each chosen execution's last attempt kept aside
        (`keep_attempt`), the rows queued again, the canary judged again."""
        journal = Journal.open(path)
        if journal.driver_alive():
            journal.close()
            raise LaunchError("this batch is running elsewhere: wait for it, or cancel it")
        for row in [r for state in states for r in journal.rows(state)]:
            keep_attempt(journal, row, path.parent / row.uuid)
        count = journal.requeue(states)
        journal.set_meta("canary_passed", False)  # the code may have changed: judge it again
        return journal, count

    def _start(self, journal: Journal, kind: str, campaign: object = None) -> Path:
        path = journal.path.resolve()
        run = Run(path, kind, campaign=campaign)
        self.runs[path] = run
        self.tg.start_soon(self._drive, journal, run)
        return path

    # -- stopping ------------------------------------------------------------------------------

    def cancel(self, path: Path) -> bool:
        """Cancel a run driven here (its running executions are killed and queued again);
        False when this server does not drive it."""
        run = self.get(path)
        if run is None or run.done or run.driver is None:
            return False
        run.driver.cancel()
        return True

    def stop_all(self) -> None:
        for run in self.runs.values():
            if not run.done and run.driver is not None:
                run.driver.cancel()

    # -- driving -------------------------------------------------------------------------------

    async def _drive(self, journal: Journal, run: Run) -> None:
        try:
            if run.kind == "campaign":  # expegit's drive takes the journal's lease itself
                await self._campaign(journal, run)
                return
            with journal.lease():
                meta = journal.meta()
                if run.kind == "search":
                    await self._search(journal, meta, run)
                else:
                    await self._batch(journal, meta, run)
        except Exception as error:  # one run's failure is shown on its page, not the server's
            log.warning("run %s ended with an error: %s", journal.path, error)
            run.error = f"{type(error).__name__}: {error}"
        finally:
            run.done = True
            journal.close()

    async def _batch(self, journal: Journal, meta: dict, run: Run) -> None:
        folder = journal.path.parent
        settings = BatchSettings(
            script=Path(meta["script"]), output=folder,
            code=Path(meta["code"]) if meta.get("code") else None,
            post_command=meta.get("post_command"),
            duration=parse_duration(meta["duration"]) if meta.get("duration") else None,
            ship=tuple((k, Path(v)) for k, v in (meta.get("ship") or {}).items()))
        async with open_engine(str(meta["profile"]), leave=str(meta["leave"]),
                               send_ignore=str(meta["send_ignore"]),
                               fetch_ignore=str(meta["fetch_ignore"])) as engine:
            run.driver = Driver(engine, journal, SweepSource(engine, settings),
                                Policy.from_meta(meta))
            await run.driver.run()

    async def _campaign(self, journal: Journal, run: Run) -> None:
        from expegit.run import drive

        def started(driver: Driver, engine: Engine) -> None:
            run.driver = driver

        await drive(run.campaign, journal, started=started)

    async def _search(self, journal: Journal, meta: dict, run: Run) -> None:
        from parasearch.cli import settings_of
        from parasearch.search import SearchSource
        from parasearch.store import Store

        store = Store(str(meta["storage"]), str(meta["name"]))
        try:
            settings = settings_of(meta, store.meta(), journal.path.parent)
            async with open_engine(str(meta["profile"]),
                                   leave=str(meta["leave"])) as engine:
                source = SearchSource(engine, settings, store, str(meta["driver_id"]))
                run.driver = Driver(engine, journal, source, Policy.from_meta(meta))
                await run.driver.run()
        finally:
            store.close()
        if source.failure:
            run.error = source.failure
