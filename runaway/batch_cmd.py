"""`runaway batch`, `status`, `retry` and `cancel`: many executions, journaled and resumable.

A batch lives in its folder (default `./batch/<name>`): the journal (`journal.sqlite`) and one
sub-folder per execution with its fetched files plus `ecode`, `stdout` and `stderr`.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid
from pathlib import Path

import anyio

from liborchestra import params
from liborchestra.batch import BatchSettings, SweepSource
from liborchestra.driver import Driver, Policy
from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution
from liborchestra.journal import Journal, JournalError, default_name
from liborchestra.profile import load_profile
from runaway.progress import Progress, mode_for
from runaway.render import Renderer

REFRESH = 0.5


def add_parsers(sub, shared) -> None:
    b = sub.add_parser("batch", help="run a script for every combination of parameters",
                       description="Run SCRIPT many times; see README for the sweep syntaxes.")
    b.add_argument("profile")
    b.add_argument("script", type=Path)
    add_sweep_arguments(b)
    b.add_argument("--name", help="batch name (default: script name and time)")
    b.add_argument("-o", "--output", type=Path, help="batch folder (default ./batch/NAME)")
    b.add_argument("--resume", action="store_true", help="continue the batch NAME")
    b.add_argument("--retries", type=int, default=0, help="re-run a failed execution N times")
    b.add_argument("--crash-limit", type=int, default=3,
                   help="requeue an execution lost to the infrastructure up to N times")
    b.add_argument("--canary", type=int, default=0, metavar="N",
                   help="run N executions first; stop if any fails")
    b.add_argument("--recover-patience", type=float, default=300.0, metavar="SECONDS",
                   help="on resume, how long to keep trying a node that cannot be reached "
                        "before its runs are fenced off and run again elsewhere (default 300)")
    b.add_argument("-p", "--post-command", help="run locally in each output folder after fetch")
    b.add_argument("--duration", help="expected duration of each execution (e.g. 20m)")
    b.add_argument("--code", type=Path, help="folder to ship (default: the script's folder)")
    b.add_argument("--json", action="store_true", help="JSON lines instead of a live view")
    shared(b)
    for name, text in (("status", "counts and failures of a batch"),
                       ("retry", "run again the failed or lost executions of a batch"),
                       ("cancel", "stop a batch: kill its executions, release allocations")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("name")
        p.add_argument("-o", "--output", type=Path, help="batch folder (default ./batch/NAME)")
        if name == "retry":
            p.add_argument("--failed", action="store_true", help="the failed ones (default)")
            p.add_argument("--lost", action="store_true", help="the lost ones")
            p.add_argument("--json", action="store_true")


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep options of `runaway batch`; every tool that runs sweeps takes the same."""
    p.add_argument("template", nargs="*", metavar="TEMPLATE",
                   help="after `--`: an argument template, e.g. --lr={0.1;0.01}")
    p.add_argument("-A", "--arguments-file", type=Path, help="one template per line, in order")
    p.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                   help="a grid dimension, passed as --NAME=V (repeat the option)")
    p.add_argument("--configs", type=Path, metavar="DIR",
                   help="one execution per file of DIR; the template uses %%IN, %%OUT, %%DATA")
    p.add_argument("--data", help="the path %%DATA stands for")
    p.add_argument("-x", "--repeats", type=int, default=1, help="run each point N times")


def _folder(args: argparse.Namespace, name: str) -> Path:
    return (args.output or Path("batch") / name).resolve()


def sweep_from_args(args: argparse.Namespace) -> params.Sweep:
    """The sweep of `add_sweep_arguments`' options; every problem is a ParamsError before
    anything runs."""
    text = " ".join(args.template)
    sweeps = []
    if args.configs:
        sweeps.append(params.config_dir(args.configs, text or "%IN", args.data))
    elif args.arguments_file:
        sweeps.append(params.arguments_file(args.arguments_file))
    if args.param:
        sweeps.append(params.param_grid(args.param, "--param"))
    if text and not args.configs:
        sweeps.append(params.template(text))
    if not sweeps:
        sweeps.append(params.template(""))
    return params.Sweep.chain(*sweeps).repeat(args.repeats)


def _new(args: argparse.Namespace) -> tuple[Journal, dict]:
    if not args.script.is_file():
        raise OrchestraError(f"{args.script}: no such script")
    sweep = sweep_from_args(args)
    profile = load_profile(args.profile)  # fails now, not after the journal exists
    name = args.name or default_name(args.script.stem)
    meta = {
        "name": name, "profile": _profile_ref(args.profile), "script": str(args.script.resolve()),
        "code": str(args.code.resolve()) if args.code else None, "retries": args.retries,
        "crash_limit": args.crash_limit, "canary": args.canary,
        "recover_patience": args.recover_patience,
        "post_command": args.post_command, "duration": args.duration, "leave": args.leave,
        "send_ignore": args.send_ignore, "fetch_ignore": args.fetch_ignore,
        "ship": {k: str(v.resolve()) for k, v in sweep.ship.items()}, "total": sweep.count,
        "created": time.time(), "profile_name": profile.name,
    }
    journal = Journal.create(_folder(args, name) / "journal.sqlite", meta)
    journal.add((str(uuid.uuid4()), p.argv, p.label) for p in sweep)
    return journal, meta


def _profile_ref(text: str) -> str:
    path = Path(text).expanduser()
    return str(path.resolve()) if path.is_file() else text


async def batch(args: argparse.Namespace, renderer: Renderer, signals) -> int:
    if args.resume:
        if not args.name:
            raise OrchestraError("--resume needs --name NAME (the batch to continue)")
        journal = Journal.open(_folder(args, args.name) / "journal.sqlite")
        meta = journal.meta()
    else:
        journal, meta = _new(args)
    return await _drive(journal, meta, renderer, signals, args.json)


async def retry(args: argparse.Namespace, renderer: Renderer, signals) -> int:
    journal = _open(args)
    meta = journal.meta()
    states = (["failed"] if args.failed or not args.lost else []) + (["lost"] if args.lost else [])
    count = journal.requeue(states)
    journal.set_meta("canary_passed", False)  # the code may have changed: judge it again
    renderer.note(f"{count} execution(s) queued again ({', '.join(states)})")
    return await _drive(journal, meta, renderer, signals, args.json)


def _open(args: argparse.Namespace) -> Journal:
    path = _folder(args, args.name) / "journal.sqlite"
    if not path.is_file():
        raise OrchestraError(f"no batch named {args.name!r} (no {path})")
    journal = Journal.open(path)
    if journal.driver_alive():
        raise JournalError(f"batch {args.name!r} is running (driver pid "
                           f"{journal.meta()['driver_pid']}); wait, or `runaway cancel` it")
    return journal


async def _drive(journal: Journal, meta: dict, renderer: Renderer, signals, json: bool) -> int:
    with journal.lease():
        profile = load_profile(str(meta["profile"]))
        folder = journal.path.parent
        settings = BatchSettings(
            script=Path(meta["script"]), output=folder,
            code=Path(meta["code"]) if meta.get("code") else None,
            post_command=meta.get("post_command"), duration=_duration(meta.get("duration")),
            ship=tuple((k, Path(v)) for k, v in (meta.get("ship") or {}).items()))
        async with Engine(profile, leave=str(meta["leave"]),
                          send_ignore=str(meta["send_ignore"]),
                          fetch_ignore=str(meta["fetch_ignore"])) as engine:
            progress = Progress(journal, engine, mode_for(json), renderer.console)
            engine.listeners.append(progress.event)
            driver = Driver(engine, journal, SweepSource(engine, settings),
                            Policy.from_meta(meta))
            signals.on_first = lambda: (driver.drain(), renderer.note(
                "draining: no new executions; running ones finish (Ctrl-C again: cancel now)"))
            with progress:
                async with anyio.create_task_group() as tg:
                    async def refresh() -> None:
                        while True:
                            progress.refresh()
                            await anyio.sleep(REFRESH)

                    tg.start_soon(refresh)
                    await driver.run()
                    tg.cancel_scope.cancel()
        progress.summary(_failures(journal))
    counts = journal.counts()
    return 0 if set(counts) <= {"completed"} else 1


def _duration(text) -> float | None:
    from liborchestra._fields import parse_duration

    return None if not text else parse_duration(text)


def _failures(journal: Journal) -> list[tuple[str, str]]:
    out = []
    for row in journal.rows("failed", limit=10) + journal.rows("lost", limit=10):
        stderr = journal.path.parent / row.uuid / "stderr"
        tail = stderr.read_text(errors="replace").strip().splitlines()[-2:] \
            if stderr.is_file() else []
        why = f"exit {row.ecode}" if row.state == "failed" else (row.message or "lost")
        out.append((f"#{row.seq} {row.label or '(no arguments)'}",
                    why + (": " + " | ".join(tail) if tail else "")))
    return out


def status(args: argparse.Namespace, renderer: Renderer) -> int:
    path = _folder(args, args.name) / "journal.sqlite"
    if not path.is_file():
        raise OrchestraError(f"no batch named {args.name!r} (no {path})")
    journal = Journal.open(path)
    meta, counts = journal.meta(), journal.counts()
    state = "running" if journal.driver_alive() else "stopped"
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{meta['name']}: {total} executions ({parts}); driver {state}; folder {path.parent}")
    for label, detail in _failures(journal):
        print(f"  {label}: {detail}")
    return 0


async def cancel(args: argparse.Namespace, renderer: Renderer, signals) -> int:
    path = _folder(args, args.name) / "journal.sqlite"
    if not path.is_file():
        raise OrchestraError(f"no batch named {args.name!r} (no {path})")
    journal = Journal.open(path)
    meta = journal.meta()
    if journal.driver_alive():  # one writer: ask the driver to cancel, it records it
        os.kill(int(meta["driver_pid"]), signal.SIGTERM)
        renderer.note(f"asked the driver (pid {meta['driver_pid']}) to cancel")
        return 0
    profile = load_profile(str(meta["profile"]))
    with journal.lease():  # no driver may resume while this cleans up
        async with Engine(profile) as engine:
            for row in journal.in_flight():
                if row.run and row.node:
                    execution = Execution(script=Path(meta["script"]), uuid=row.run)
                    shell = engine.shell(engine.scheduler.reach(row.node, row.allocation))
                    await engine.launcher.kill(shell, execution)
                journal.finished(row.seq, "cancelled", None, "cancelled")
            for allocation in journal.live_allocations():
                await engine.release_stale(allocation)
                journal.allocation(allocation, "released", "cancelled")
        with journal.db:
            journal.db.execute("UPDATE executions SET state = 'cancelled' WHERE state = 'queued'")
    renderer.note(f"batch {args.name!r} cancelled")
    return 0
