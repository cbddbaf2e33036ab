"""`runaway`: run scripts on the slots a profile gives. A thin layer over liborchestra.

Exit codes: the script's own for `exec`; 2 for bad input; 3 when the infrastructure lost the
execution; 130/143 after Ctrl-C/SIGTERM (remote processes killed first).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import anyio

from liborchestra import events, heap
from liborchestra.check import check_profile
from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution, State
from liborchestra.launch import check_runnable
from liborchestra.profile import LEAVE, load_profile
from liborchestra.results import parse_parameters, write_record
from liborchestra.transfer import OUTPUT_MARKER
from runaway import batch_cmd, clean_cmd, logs_cmd, results_cmd, sched_cmd
from runaway.argv import add_version, split_script_args
from runaway.interrupts import Interrupts
from runaway.render import Renderer

EXIT_USAGE, EXIT_LOST = 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse, with a hint for the usual mistake: the script's options before `--`."""

    def error(self, message: str):  # type: ignore[override]
        if "unrecognized arguments" in message:
            message += ("\n  the script's own arguments go after `--`, e.g. "
                        "runaway exec PROFILE SCRIPT -- --lr 0.1")
        super().error(message)


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="runaway", description="Run scripts on local machines, SSH hosts and clusters.")
    top.add_argument("-v", "--verbose", action="store_true", help="show engine events")
    add_version(top, "runaway")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ex = sub.add_parser("exec", help="run one execution and fetch its results",
                        description="Run SCRIPT once on PROFILE; the exit code is the script's.")
    ex.add_argument("profile", help="profile name (./profiles, ~/.config/orchestra/profiles, "
                    "built-in `local`) or path to a .yml file")
    ex.add_argument("script", type=Path, help="the script to run (its folder is shipped)")
    ex.add_argument("args", nargs="*", metavar="ARG",
                    help="arguments after `--`, passed verbatim to the script")
    ex.add_argument("-o", "--output", type=Path,
                    help="local folder for fetched results (default ./runs/<uuid>)")
    ex.add_argument("--code", type=Path, help="folder to ship (default: the script's folder)")
    _shared(ex)
    ex.add_argument("--no-ecode", action="store_true",
                    help="exit 0 whatever the script's exit code")

    ck = sub.add_parser("check", help="check that a profile is usable",
                        description="Reachability, host keys, auth, remote directory, slots.")
    ck.add_argument("profile")
    batch_cmd.add_parsers(sub, _shared)
    results_cmd.add_parsers(sub)
    sched_cmd.add_parser(sub, _shared)
    logs_cmd.add_parser(sub)
    clean_cmd.add_parser(sub)
    return top


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--send-ignore", default=".sendignore",
                   help="file of globs not shipped (default .sendignore in the code folder)")
    p.add_argument("-f", "--fetch-ignore", default=".fetchignore",
                   help="file of globs not fetched back (default .fetchignore)")
    p.add_argument("-l", "--leave", choices=LEAVE, default="code",
                   help="what stays on the remote: nothing, code (default: the cached code "
                        "archive), everything (also the run folder)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    argv, tail = split_script_args(argv)
    args = parser().parse_args(argv)
    if args.command == "exec":
        args.args = [*args.args, *tail]
    renderer = Renderer(verbose=args.verbose)
    commands = {"exec": _exec, "check": _check, "batch": batch_cmd.batch,
                "retry": batch_cmd.retry, "cancel": batch_cmd.cancel, "sched": sched_cmd.sched,
                "logs": logs_cmd.logs, "clean": clean_cmd.clean}
    try:
        if args.command == "status":
            return batch_cmd.status(args, renderer)
        if args.command == "results":
            return results_cmd.results(args)
        if args.command == "list":
            return results_cmd.list_batches(args)
        if hasattr(args, "template"):
            args.template = [*args.template, *tail]
        interrupts = Interrupts(renderer)
        heap.settle()
        return anyio.run(interrupts.run, commands[args.command], args, renderer,
                         backend="asyncio")
    except OrchestraError as error:
        renderer.error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


async def _exec(args: argparse.Namespace, renderer: Renderer, _: Interrupts) -> int:
    script = args.script
    check_runnable(script)
    code = args.code.resolve() if args.code else None
    if code is not None:
        if not code.is_dir():
            raise OrchestraError(f"--code {args.code}: no such folder")
        if not script.resolve().is_relative_to(code):
            raise OrchestraError(f"{script}: the script must be inside --code {args.code}")
    profile = load_profile(args.profile)
    execution = Execution(script=script, args=args.args, code=code, stream=True)
    output = args.output or Path("runs") / execution.uuid
    execution = Execution(script=script, args=args.args, code=code, stream=True,
                          output=output.resolve(), uuid=execution.uuid)
    _own_files_note(execution.output, execution.code_dir, renderer)
    started: list[events.ExecutionStarted] = []

    def seen(event: events.Event) -> None:
        if isinstance(event, events.ExecutionStarted):
            started.append(event)

    async with Engine(profile, leave=args.leave, send_ignore=args.send_ignore,
                      fetch_ignore=args.fetch_ignore, listeners=[renderer.event, seen]) as engine:
        result = await engine.submit(execution)
    if result.output is not None and result.output.is_dir():
        where = started[-1] if started else None
        write_record(result.output, {
            "uuid": execution.uuid, "arguments": list(execution.args),
            "label": execution.arguments, "parameters": parse_parameters(execution.args),
            "digest": where.digest if where else None, "script": str(script.resolve()),
            "profile": profile.name, "state": result.state.value, "ecode": result.ecode,
            "node": result.node, "slot": result.slot,
            "allocation": where.allocation if where else None,
            "started": result.started, "finished": result.finished, "message": result.message})
    renderer.finished(result)
    if result.state is State.LOST:
        return EXIT_LOST
    if args.no_ecode:
        return 0
    return result.ecode if result.ecode is not None else EXIT_LOST


def _own_files_note(output: Path, code: Path, renderer: Renderer) -> None:
    """A results folder that already holds the user's files is not marked as results (they
    would vanish from the code shipped next): say what that means."""
    if (output / OUTPUT_MARKER).exists() or not output.is_dir() or not any(output.iterdir()):
        return
    if output.is_relative_to(code):
        renderer.note(f"-o {os.path.relpath(output)} holds files of yours: it is not marked as "
                      "results, so it stays in the code shipped, with what this run writes "
                      "there; give a new folder to keep results apart")


async def _check(args: argparse.Namespace, renderer: Renderer, _: Interrupts) -> int:
    profile = load_profile(args.profile)
    ok = await check_profile(profile, renderer.check)
    return 0 if ok else 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
