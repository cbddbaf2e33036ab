"""`runaway sched PROFILE SCRIPT "SCHEDULER COMMAND"`: an external program chooses parameters.

The scheduler command runs locally (`bash -c`) and speaks the JSON-lines protocol of the
original runaway (see liborchestra/sched.py). Results land in `./sched/<name>/<uuid>/` like
batch's (fetched files plus `ecode`, `stdout`, `stderr`), with `sched.jsonl` beside them: one
line per recorded execution (uuid, parameters, state, exit code, features), and the journal
(`journal.sqlite`) that `--resume --name NAME` continues from.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.markup import escape

from liborchestra import events
from liborchestra._fields import Bad, parse_duration
from liborchestra.driver import Driver, ExecutionRequeued, Policy
from liborchestra.errors import OrchestraError
from liborchestra.federation import load_profiles, open_engine, profile_ref
from liborchestra.journal import Journal, default_name
from liborchestra.sched import (
    FeaturesInvalid,
    PointRecorded,
    SchedProtocolError,
    SchedSettings,
    SchedSource,
    SchedulerFailed,
    SchedulerStderr,
)
from runaway.batch_cmd import reap_leftovers
from runaway.batches import check_name, failures
from runaway.interrupts import Interrupts
from runaway.render import Renderer


def add_parser(sub, shared) -> None:
    p = sub.add_parser(
        "sched", help="run a script with parameters chosen by an external scheduler program",
        description="Run SCRIPT on PROFILE with the parameters a scheduler program chooses. "
                    "The program gets JSON requests on stdin, one per line "
                    "(GET_PARAMETERS_REQUEST, RECORD_OUTPUT_REQUEST, SHUTDOWN_REQUEST), and "
                    "answers one JSON line on stdout each; SEARCH_FINISHED_RESPONSE ends the "
                    "search. An execution exports features (numbers) with a stdout line "
                    "`RUNAWAY_FEATURES: 1.0 2.5` or a file `features` in its run folder.")
    p.add_argument("profile", nargs="?")
    p.add_argument("script", type=Path, nargs="?")
    p.add_argument("scheduler", metavar="SCHEDULER_COMMAND", nargs="?",
                   help="the scheduler program, run locally with bash -c")
    p.add_argument("--name", help="name of the search (default: script name and time)")
    p.add_argument("-o", "--output", type=Path, help="search folder (default ./sched/NAME)")
    p.add_argument("--resume", action="store_true",
                   help="continue the search NAME: the program is started again and fed the "
                        "recorded history; what ran is not run again")
    p.add_argument("--crash-limit", type=int, default=3,
                   help="requeue an execution lost to the infrastructure up to N times")
    p.add_argument("--duration", help="expected duration of each execution (e.g. 20m)")
    p.add_argument("--code", type=Path, help="folder to ship (default: the script's folder)")
    shared(p)


async def sched(args: argparse.Namespace, renderer: Renderer, interrupts: Interrupts) -> int:
    if args.resume:
        if not args.name:
            raise OrchestraError("--resume needs --name NAME (the search to continue)")
        check_name(args.name)
        folder = (args.output or Path("sched") / args.name).resolve()
        path = folder / "journal.sqlite"
        if not path.is_file():
            raise OrchestraError(f"no search named {args.name!r} to resume (no {path})")
        journal = Journal.open(path)
    else:
        journal = _new(args)
    meta = journal.meta()
    folder = journal.path.parent
    settings = SchedSettings(
        script=Path(meta["script"]), output=folder, command=str(meta["command"]),
        code=Path(meta["code"]) if meta.get("code") else None,
        duration=parse_duration(meta["duration"]) if meta.get("duration") else None,
        env={"RUNAWAY_REMOTE": str(meta.get("profile_name") or meta["profile"]),
             "RUNAWAY_SCRIPT_PATH": str(meta["script"]), "RUNAWAY_SCHED_FOLDER": str(folder)})
    view = _View(renderer, interrupts)
    with journal.lease():
        async with open_engine(str(meta["profile"]), leave=str(meta["leave"]),
                               send_ignore=str(meta["send_ignore"]),
                               fetch_ignore=str(meta["fetch_ignore"]),
                               listeners=[view.event]) as engine:
            await reap_leftovers(engine, journal, meta, renderer)
            source = SchedSource(engine, settings)
            driver = Driver(engine, journal, source, Policy.from_meta(meta))
            interrupts.on_first = lambda: (driver.drain(), renderer.note(
                "draining: no new parameters; running executions finish and are recorded "
                "(Ctrl-C again: cancel now)"))
            await driver.run()
    counts = journal.counts()
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    renderer.note(f"sched {meta['name']}: {sum(counts.values())} executions ({parts}); "
                  f"results in {folder}")
    for label, detail in failures(journal):
        renderer.console.print(f"[red]failed[/red] {escape(label)}: {escape(detail)}",
                               highlight=False)
    if source.error():
        renderer.error(str(SchedProtocolError(source.error())))
        return 1
    return 0 if set(counts) <= {"completed"} else 1


def _new(args: argparse.Namespace) -> Journal:
    """A new search's journal, with its settings; every problem is one error first."""
    if args.profile is None or args.script is None or args.scheduler is None:
        raise OrchestraError("sched needs PROFILE SCRIPT SCHEDULER_COMMAND "
                             "(or --resume --name NAME)")
    script = args.script
    if not script.is_file():
        raise OrchestraError(f"{script}: no such script")
    code = args.code.resolve() if args.code else None
    if code is not None and not script.resolve().is_relative_to(code):
        raise OrchestraError(f"{script}: the script must be inside --code {args.code}")
    if not args.scheduler.strip():
        raise OrchestraError("the scheduler command is empty")
    if args.crash_limit < 0:
        raise OrchestraError("--crash-limit must be 0 or more")
    try:
        if args.duration:
            parse_duration(args.duration)
    except Bad as error:
        raise OrchestraError(f"--duration: {error}") from None
    if args.name is not None:
        check_name(args.name)
    profiles = load_profiles(args.profile)
    name = args.name or default_name(script.stem)
    folder = (args.output or Path("sched") / name).resolve()
    meta = {"name": name, "kind": "sched", "profile_name": ",".join(p.name for p in profiles),
            "profile": profile_ref(args.profile),
            "script": str(script.resolve()), "code": str(code) if code else None,
            "command": args.scheduler, "duration": args.duration, "leave": args.leave,
            "send_ignore": args.send_ignore, "fetch_ignore": args.fetch_ignore,
            "created": time.time(), **Policy(crash_limit=args.crash_limit).to_meta()}
    return Journal.create(folder / "journal.sqlite", meta)


class _View:
    """The scheduler's stderr (prefixed), one line per recorded execution, engine events."""

    def __init__(self, renderer: Renderer, interrupts: Interrupts) -> None:
        self.renderer, self.interrupts = renderer, interrupts

    def event(self, event: events.Event | object) -> None:
        if isinstance(event, SchedulerStderr):
            sys.stderr.write(f"sched: {event.line}\n")
            sys.stderr.flush()
        elif isinstance(event, PointRecorded):
            features = " ".join(f"{v:g}" for v in event.features)
            shown = event.parameters if isinstance(event.parameters, str) else \
                " ".join(event.parameters)
            exit_code = "" if event.ecode is None else f" (exit {event.ecode})"
            self.renderer.note(f"{event.uuid[:8]} {event.state}{exit_code} "
                               f"[{shown}]" + (f" features {features}" if features else ""))
        elif isinstance(event, ExecutionRequeued):
            self.renderer.note(f"{event.uuid[:8]} lost ({event.message}); requeued with the "
                               f"same parameters (attempt {event.attempt + 1})")
        elif isinstance(event, SchedulerFailed) and event.running:
            self.interrupts.on_first = None  # already draining: Ctrl-C cancels
            self.renderer.note(f"stopping: {event.message}; waiting for {event.running} "
                               "running execution(s) to finish (Ctrl-C: cancel them now)")
        elif isinstance(event, FeaturesInvalid):
            self.renderer.note(f"{event.uuid[:8]}: features ignored: {event.message}")
        else:
            self.renderer.event(event)  # type: ignore[arg-type]
