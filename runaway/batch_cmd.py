"""`runaway batch`, `status`, `retry` and `cancel`: many executions, journaled and resumable.

A batch lives in its folder (default `./batch/<name>`): the journal (`journal.sqlite`) and one
sub-folder per execution with its fetched files plus `ecode`, `stdout` and `stderr`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path

from liborchestra.batch import BatchSettings, SweepSource, keep_attempt
from liborchestra.cleanup import LEFTOVER_STATES, remove_leftovers
from liborchestra.driver import Driver, Policy
from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution
from liborchestra.federation import Federation, load_profiles, open_engine, profile_ref
from liborchestra.journal import Journal, JournalError, default_name
from liborchestra.launch import check_runnable
from liborchestra.transfer import OUTPUT_MARKER, build_archive
from runaway.batches import check_name, failures, locate, post_failures
from runaway.progress import Progress, mode_for, run_refreshing
from runaway.render import Renderer
from runaway.sweep_args import (
    add_sweep_arguments,
    sweep_from_args,
    sweep_given,
    sweep_spec,
    sweep_warnings,
)

__all__ = ["add_parsers", "add_sweep_arguments", "batch", "cancel", "retry", "status",
           "sweep_from_args"]

REFRESH = 0.5


def add_parsers(sub, shared) -> None:
    b = sub.add_parser("batch", help="run a script for every combination of parameters",
                       description="Run SCRIPT many times; see README for the sweep syntaxes. "
                                   "`--resume --name NAME` continues a batch by its name alone.")
    b.add_argument("profile", nargs="?", help="profile name or .yml file (not needed with "
                   "--resume)")
    b.add_argument("script", type=Path, nargs="?", help="the script (not needed with --resume)")
    add_sweep_arguments(b)
    b.add_argument("--name", help="batch name (default: script name, time and a random tag)")
    b.add_argument("-o", "--output", type=Path, help="batch folder (default ./batch/NAME)")
    b.add_argument("--resume", action="store_true", help="continue the batch NAME")
    b.add_argument("--dry-run", action="store_true",
                   help="print the executions the sweep expands to, and stop")
    b.add_argument("--retries", type=int, default=0, help="re-run a failed execution N times")
    b.add_argument("--crash-limit", type=int, default=3,
                   help="requeue an execution lost to the infrastructure up to N times")
    b.add_argument("--canary", type=int, default=0, metavar="N",
                   help="run N executions first; stop if any fails")
    b.add_argument("--recover-patience", type=float, default=300.0, metavar="SECONDS",
                   help="on resume, how long to keep trying a node that cannot be reached "
                        "before its runs are fenced off and run again elsewhere (default 300)")
    b.add_argument("-p", "--post-command", help="run locally in each output folder after fetch "
                   "(a non-zero exit is reported in the results and the summary)")
    b.add_argument("--duration", help="expected duration of each execution (e.g. 20m)")
    b.add_argument("--code", type=Path, help="folder to ship (default: the script's folder)")
    b.add_argument("--json", action="store_true", help="JSON lines instead of a live view")
    shared(b)
    for name, text in (("status", "counts and failures of a batch (default: the latest)"),
                       ("retry", "run again the unfinished executions of a batch"),
                       ("cancel", "stop a batch: kill its executions, release allocations")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("name", nargs="?" if name == "status" else None)
        p.add_argument("-o", "--output", type=Path, help="batch folder (default ./batch/NAME)")
        if name == "retry":
            p.add_argument("--failed", action="store_true", help="the failed ones")
            p.add_argument("--lost", action="store_true", help="the lost ones")
            p.add_argument("--cancelled", action="store_true", help="the cancelled ones "
                           "(default: failed, lost and cancelled)")
            p.add_argument("--json", action="store_true")


def _folder(args: argparse.Namespace, name: str) -> Path:
    return (args.output or Path("batch") / name).resolve()


def create_batch(args: argparse.Namespace) -> tuple[Journal, dict]:
    """A new batch's journal, with its settings; every problem is one error first."""
    if args.profile is None or args.script is None:
        raise OrchestraError("batch needs PROFILE SCRIPT (or --resume --name NAME)")
    check_runnable(args.script)
    if args.name is not None:
        check_name(args.name)
    sweep = sweep_from_args(args)
    profiles = load_profiles(args.profile)  # fails now, not after the journal exists
    name = args.name or default_name(args.script.stem)
    _new_folder(_folder(args, name))
    meta = {
        "name": name, "profile": profile_ref(args.profile), "script": str(args.script.resolve()),
        "code": str(args.code.resolve()) if args.code else None, "retries": args.retries,
        "crash_limit": args.crash_limit, "canary": args.canary,
        "recover_patience": args.recover_patience,
        "post_command": args.post_command, "duration": args.duration, "leave": args.leave,
        "send_ignore": args.send_ignore, "fetch_ignore": args.fetch_ignore,
        "ship": {k: str(v.resolve()) for k, v in sweep.ship.items()}, "total": sweep.count,
        "created": time.time(), "profile_name": ",".join(p.name for p in profiles),
        "sweep": sweep_spec(args),
    }
    journal = Journal.create(_folder(args, name) / "journal.sqlite", meta)
    journal.add((str(uuid.uuid4()), p.argv, p.label) for p in sweep)
    return journal, meta


def _new_folder(folder: Path) -> None:
    """A batch folder is marked as results (never shipped as code): it must not already hold
    the user's own files, or they would vanish from the code shipped."""
    if folder.is_dir() and not (folder / OUTPUT_MARKER).exists():
        mine = sorted(p.name for p in folder.iterdir())
        if mine:
            raise OrchestraError(f"-o {folder}: holds files that are not a batch's "
                                 f"({', '.join(mine[:3])}{', ...' if len(mine) > 3 else ''}); "
                                 "a batch folder is kept out of the code shipped, so give a "
                                 "new or empty folder")


async def reap_leftovers(engine: Engine | Federation, journal: Journal, meta: dict,
                         renderer: Renderer) -> None:
    """Kill and remove what interrupted runs left (after a triple Ctrl-C, or a cancel): rows
    not in flight whose last run may still have a process or a run folder. Each run once
    (marked `reaped` in the row's payload)."""
    rows = [r for r in journal.leftovers(LEFTOVER_STATES)
            if r.payload.get("reaped") != _attempt(r)]
    if not rows:
        return
    count = await remove_leftovers(engine, rows, Path(str(meta["script"])))
    for row in rows:
        journal.update_payload(row.seq, {**journal.get(row.seq).payload,
                                         "reaped": _attempt(row)})
    kept = " (kept: --leave everything)" if meta.get("leave") == "everything" else ""
    renderer.note(f"cleaned up after {count} interrupted execution(s): processes stopped, run "
                  f"folders removed{kept}")


def _attempt(row) -> str:
    """One attempt of a row: its run id and start time (a retry may reuse the run id)."""
    return f"{row.run}@{row.started}"


async def batch(args: argparse.Namespace, renderer: Renderer, signals) -> int:
    for warning in sweep_warnings(args):
        renderer.note(f"warning: {warning}")
    if args.dry_run:
        return _dry_run(args)
    if args.resume:
        if not args.name:
            raise OrchestraError("--resume needs --name NAME (the batch to continue)")
        check_name(args.name)
        path = _folder(args, args.name) / "journal.sqlite"
        if not path.is_file():
            raise OrchestraError(f"no batch named {args.name!r} to resume (no {path})")
        journal = Journal.open(path)
        meta = journal.meta()
        _same_as_journal(args, meta)
        renderer.note(_resume_plan(journal))
    else:
        journal, meta = create_batch(args)
    renderer.note(f"batch {meta['name']}: {sum(journal.counts().values())} executions; "
                  f"folder {os.path.relpath(journal.path.parent)}")
    return await _drive(journal, meta, renderer, signals, args.json)


def _dry_run(args: argparse.Namespace) -> int:
    """The executions, one per line (number and arguments), without writing anything."""
    if args.resume:
        raise OrchestraError("--dry-run shows a new batch's executions; see `runaway results "
                             "NAME` for an existing one")
    if args.script is not None and not args.script.is_file():
        raise OrchestraError(f"{args.script}: no such script")
    sweep = sweep_from_args(args)
    out = sys.stdout
    for number, point in enumerate(sweep, 1):
        out.write(f"{number}\t{shlex.join(point.argv)}\n")
    out.write(f"# {sweep.count} executions (dry run: nothing was started or written)\n")
    return 0


def _same_as_journal(args: argparse.Namespace, meta: dict) -> None:
    """`--resume` with a PROFILE, SCRIPT or sweep: refuse when it differs from the batch's
    (the journal's would run, silently)."""
    differs = []
    if args.script is not None and str(args.script.resolve()) != meta.get("script"):
        differs.append(f"script {args.script.resolve()} (the batch runs {meta.get('script')})")
    if args.profile is not None and profile_ref(args.profile) != meta.get("profile"):
        differs.append(f"profile {args.profile} (the batch uses {meta.get('profile')})")
    if sweep_given(args):
        spec, recorded = sweep_spec(args), meta.get("sweep")
        if recorded is not None and spec != recorded:
            changed = [f"{k} {spec[k]!r} (was {recorded.get(k)!r})" for k in spec
                       if spec[k] != recorded.get(k)]
            differs.append("sweep: " + ", ".join(changed))
    if differs:
        raise OrchestraError(f"--resume --name {meta.get('name')}: " + "; ".join(differs) +
                             ". Resume with --resume --name NAME alone, or start a new batch "
                             "with another --name")


def _resume_plan(journal: Journal) -> str:
    counts = journal.counts()
    todo = counts.get("queued", 0)
    flying = counts.get("submitted", 0) + counts.get("running", 0)
    left = {k: v for k, v in counts.items() if k in ("failed", "lost", "cancelled")}
    text = f"resuming: {todo} queued to run, {flying} in flight to recover"
    if left:
        parts = ", ".join(f"{v} {k}" for k, v in sorted(left.items()))
        text += f"; {parts} not run again (`runaway retry NAME` runs them)"
    return text


async def retry(args: argparse.Namespace, renderer: Renderer, signals) -> int:
    journal = _open(args)
    meta = journal.meta()
    chosen = [s for s in ("failed", "lost", "cancelled") if getattr(args, s)]
    states = chosen or ["failed", "lost", "cancelled"]
    folder = journal.path.parent
    rows = [r for state in states for r in journal.rows(state)]
    for row in rows:  # every attempt's output is kept, with its code digest
        keep_attempt(journal, row, folder / row.uuid)
    _code_changed(meta, rows, renderer)
    count = journal.requeue(states)
    journal.set_meta("canary_passed", False)  # the code may have changed: judge it again
    renderer.note(f"{count} execution(s) of batch {meta['name']} queued again "
                  f"({', '.join(states)})")
    return await _drive(journal, meta, renderer, signals, args.json)


def _code_changed(meta: dict, rows: list, renderer: Renderer) -> None:
    """Say when the code to ship now is not the code these executions ran."""
    script = Path(str(meta["script"]))
    code = Path(meta["code"]) if meta.get("code") else script.parent
    ship = tuple((k, Path(v)) for k, v in (meta.get("ship") or {}).items())
    try:
        digest = build_archive(code, str(meta["send_ignore"]), ship).digest
    except OrchestraError:
        return
    ran = sorted({r.digest for r in rows if r.digest and r.digest != digest})
    if ran:
        old = ", ".join(d[:12] for d in ran)
        renderer.note(f"the code changed since these executions ran ({old} -> {digest[:12]}): "
                      "they run the new code; earlier attempts' outputs are kept in each "
                      "execution folder's attempts/")


def _open(args: argparse.Namespace) -> Journal:
    journal = Journal.open(locate(args, "batch"))
    if journal.driver_alive():
        raise JournalError(f"batch {args.name!r} is running (driver pid "
                           f"{journal.meta()['driver_pid']}); wait, or `runaway cancel` it")
    return journal


async def _drive(journal: Journal, meta: dict, renderer: Renderer, signals, json: bool) -> int:
    with journal.lease():
        folder = journal.path.parent
        settings = BatchSettings(
            script=Path(meta["script"]), output=folder,
            code=Path(meta["code"]) if meta.get("code") else None,
            post_command=meta.get("post_command"), duration=_duration(meta.get("duration")),
            ship=tuple((k, Path(v)) for k, v in (meta.get("ship") or {}).items()))
        async with open_engine(str(meta["profile"]), leave=str(meta["leave"]),
                               send_ignore=str(meta["send_ignore"]),
                               fetch_ignore=str(meta["fetch_ignore"])) as engine:
            await reap_leftovers(engine, journal, meta, renderer)
            progress = Progress(journal, engine, mode_for(json), renderer.console)
            engine.listeners.append(progress.event)
            driver = Driver(engine, journal, SweepSource(engine, settings),
                            Policy.from_meta(meta))
            signals.on_first = lambda: (driver.drain(), renderer.note(
                "draining: no new executions; running ones finish (Ctrl-C again: cancel now)"))
            with progress:
                await run_refreshing(progress.refresh, driver.run(), REFRESH)
        progress.summary(failures(journal), name=str(meta["name"]),
                         post_failed=post_failures(journal))
    counts = journal.counts()
    return 0 if set(counts) <= {"completed"} and not post_failures(journal) else 1


def _duration(text) -> float | None:
    from liborchestra._fields import parse_duration

    return None if not text else parse_duration(text)


def status(args: argparse.Namespace, renderer: Renderer) -> int:
    journal = Journal.open(locate(args))
    meta, counts = journal.meta(), journal.counts()
    state = "running" if journal.driver_alive() else "stopped"
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{meta['name']}: {total} executions ({parts}); driver {state}; folder "
          f"{journal.path.parent}")
    for label, detail in failures(journal):
        print(f"  {label}: {detail}")
    posts = post_failures(journal)
    if posts:
        print(f"  post-command failed for {posts} execution(s) (see `runaway results "
              f"{meta['name']} --filter post!=0`)")
    return 0


async def cancel(args: argparse.Namespace, renderer: Renderer, signals) -> int:
    journal = Journal.open(locate(args, "batch"))
    meta = journal.meta()
    if journal.driver_alive():  # one writer: ask the driver to cancel, it records it
        os.kill(int(meta["driver_pid"]), signal.SIGTERM)
        renderer.note(f"asked the driver (pid {meta['driver_pid']}) to cancel")
        return 0
    with journal.lease():  # no driver may resume while this cleans up
        async with open_engine(str(meta["profile"]),
                               leave=str(meta.get("leave") or "code")) as engine:
            for row in journal.in_flight():
                if row.run and row.node:
                    execution = Execution(script=Path(meta["script"]), uuid=row.run)
                    await engine.kill_run(execution, row.node, row.allocation)
                journal.finished(row.seq, "cancelled", None, "cancelled")
            for allocation in journal.live_allocations():
                await engine.release_stale(allocation)
                journal.allocation(allocation, "released", "cancelled")
            with journal.db:
                journal.db.execute("UPDATE executions SET state = 'cancelled' "
                                   "WHERE state = 'queued'")
            await reap_leftovers(engine, journal, meta, renderer)
    renderer.note(f"batch {args.name!r} cancelled; `runaway retry {args.name}` runs its "
                  "unfinished executions again")
    return 0
