"""`expegit`: a campaign of experiments in git. A thin layer over the expegit library.

Exit codes: 0 done; 1 some executions failed or were lost; 2 bad input or a refused action;
130/143 after Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from expegit import record as records
from expegit import views
from expegit.campaign import DEFAULT_THRESHOLD, Campaign, CampaignError, git_errors
from liborchestra.errors import OrchestraError
from liborchestra.profile import LEAVE
from runaway.argv import split_script_args
from runaway.sweep_args import add_sweep_arguments

EXIT_USAGE = 2


class _Plain:
    """Notes and errors on stderr for the commands that drive nothing (status, export...):
    they start without rich, the engine and GitPython."""

    def note(self, text: str) -> None:
        print(f"expegit: {text}", file=sys.stderr)

    def error(self, text: str) -> None:
        print(f"expegit: error: {text}", file=sys.stderr)


class _Version(argparse.Action):
    """--version, reading the package metadata only when asked (~40 ms at every start)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="show the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from liborchestra import __version__

        print(f"expegit {__version__}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="expegit", description="Experiment campaigns in git: "
                                  "every execution recorded with its exact code.")
    top.add_argument("--version", action=_Version)
    top.add_argument("-C", dest="campaign", type=Path, default=Path("."),
                     help="the campaign folder (default: the current one or a parent)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="make a campaign around a code repository")
    p.add_argument("dir", type=Path, nargs="?", default=Path("."))
    p.add_argument("--code", required=True, metavar="REPO", help="code repository (path or URL)")
    p.add_argument("--large-threshold", type=int, default=DEFAULT_THRESHOLD, metavar="BYTES",
                   help="result files above this size go to git-annex (default 1 MiB)")
    p.add_argument("--large", action="append", default=[], metavar="GLOB",
                   help="result files matching GLOB go to git-annex (repeat)")
    p.add_argument("--no-annex", action="store_true", help="keep every file in git")

    p = sub.add_parser("clone", help="a working copy of a campaign (code submodule included)")
    p.add_argument("url")
    p.add_argument("dir", type=Path, nargs="?")

    p = sub.add_parser("run", help="run a script of code/ over a sweep; record every execution",
                       description="SWEEP is exactly `runaway batch`'s (see README).")
    p.add_argument("profile")
    p.add_argument("script", help="the script, relative to code/")
    add_sweep_arguments(p)
    _run_options(p)
    p.add_argument("--commit", metavar="REV", help="code commit to run (default: HEAD of code/)")
    p.add_argument("--dirty", action="store_true",
                   help="run uncommitted changes of code/, recording their patch")
    p.add_argument("--resume", action="store_true", help="continue the run --name (default: "
                   "the latest run of this clone)")

    sub.add_parser("status", help="counts by state and commit; recent failures")
    p = sub.add_parser("show", help="one execution's record")
    p.add_argument("run")
    p = sub.add_parser("export", help="one row per execution")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    p = sub.add_parser("rerun", help="run executions again with the same parameters")
    p.add_argument("runs", nargs="*", metavar="RUN")
    p.add_argument("--failed", action="store_true", help="every failed or lost execution")
    p.add_argument("--commit", metavar="REV", help="at this commit (default: the record's)")
    p.add_argument("--profile", help="on this profile (default: the record's)")
    _run_options(p)
    p = sub.add_parser("remove", help="delete executions' records (committed)")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p = sub.add_parser("update-code", help="move code/ to a commit and record it")
    p.add_argument("rev", nargs="?", help="default: the remote's branch head")
    p = sub.add_parser("sync", help="fetch, merge and push records (and large files)")
    p.add_argument("remote", nargs="?", default="origin")
    p = sub.add_parser("get", help="fetch the large files of an execution")
    p.add_argument("run")
    p.add_argument("paths", nargs="*", metavar="PATH")
    return top


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="run name (default: script name and time)")
    p.add_argument("--retries", type=int, default=0, help="re-run a failed execution N times")
    p.add_argument("--crash-limit", type=int, default=3,
                   help="requeue an execution lost to the infrastructure up to N times")
    p.add_argument("--canary", type=int, default=0, metavar="N",
                   help="run N executions first; stop if any fails")
    p.add_argument("--duration", help="expected duration of each execution (e.g. 20m)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a live view")
    p.add_argument("-s", "--send-ignore", default=".sendignore")
    p.add_argument("-f", "--fetch-ignore", default=".fetchignore")
    p.add_argument("-l", "--leave", choices=LEAVE, default="code")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    argv, tail = split_script_args(argv)
    args = parser().parse_args(argv)
    if hasattr(args, "template"):
        args.template = [*args.template, *tail]
    renderer = _Plain()
    try:
        if args.command in ("run", "rerun"):
            from expegit.drive_cli import drive_command

            return drive_command(args)
        return COMMANDS[args.command](args, renderer)
    except OrchestraError as error:
        renderer.error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _init(args: argparse.Namespace, renderer: _Plain) -> int:
    campaign = Campaign.init(args.dir, args.code, annex=False if args.no_annex else None,
                             threshold=args.large_threshold, large=tuple(args.large))
    renderer.note(f"campaign in {campaign.root} (code: {args.code}"
                  f"{'; large files in git-annex' if campaign.settings.annex else ''})")
    return 0


def _clone(args: argparse.Namespace, renderer: _Plain) -> int:
    campaign = Campaign.clone(args.url, args.dir)
    renderer.note(f"campaign cloned into {campaign.root}")
    return 0


def _status(args: argparse.Namespace, renderer: _Plain) -> int:
    campaign = Campaign.open(args.campaign)
    st = views.status(campaign.runs)
    print(f"{st.total} execution(s) in {campaign.root}")
    for (state, commit), n in sorted(st.counts.items()):
        print(f"  {state:<10} {commit:<20} {n}")
    for failure in st.failures:
        rec = failure.record
        why = f"exit {rec.exit_code}" if rec.state == "failed" else (rec.message or "lost")
        tail = (": " + " | ".join(failure.tail)) if failure.tail else ""
        print(f"  {rec.id[:8]} {' '.join(rec.arguments) or '(no arguments)'}: {why}{tail}")
    return 0


def _show(args: argparse.Namespace, renderer: _Plain) -> int:
    campaign = Campaign.open(args.campaign)
    folder = records.find(campaign.runs, args.run)
    print((folder / records.RECORD).read_text(), end="")
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(folder).as_posix()
        if rel != records.RECORD:
            here = "" if path.exists() else "  (large, not here: expegit get)"
            print(f"  {rel}{here}")
    return 0


def _export(args: argparse.Namespace, renderer: _Plain) -> int:
    campaign = Campaign.open(args.campaign)
    text = views.export(campaign.runs, args.format)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _remove(args: argparse.Namespace, renderer: _Plain) -> int:
    from expegit.source import remove_run

    campaign = Campaign.open(args.campaign)
    folders = [records.find(campaign.runs, r) for r in args.runs]  # all found, or none removed
    for folder in folders:
        remove_run(campaign, folder)
    renderer.note(f"removed {len(folders)} record(s)")
    return 0


def _update_code(args: argparse.Namespace, renderer: _Plain) -> int:
    from expegit import code

    campaign = Campaign.open(args.campaign)
    if code.dirty(campaign):
        raise CampaignError("code/ has uncommitted changes; commit or stash them first")
    repo = campaign.code_repo()
    if args.rev is None:
        with git_errors("cannot fetch the code's remote"):
            repo.git.fetch("--quiet", "origin")
        commit = code.resolve(campaign, "origin/HEAD" if _has(repo, "origin/HEAD") else "HEAD")
    else:
        commit = code.resolve(campaign, args.rev)
    with git_errors(f"cannot check out {commit[:12]} in code/"):
        repo.git.checkout("--quiet", "--detach", commit)
    changed = campaign.commit(["code"], f"expegit: code at {commit[:12]}")
    renderer.note(f"code/ at {commit[:12]}" + ("" if changed else " (unchanged)"))
    return 0


def _has(repo, ref: str) -> bool:
    return bool(repo.git.rev_parse("--verify", "--quiet", ref, with_exceptions=False).strip())


def _sync(args: argparse.Namespace, renderer: _Plain) -> int:
    from expegit.sync import sync

    campaign = Campaign.open(args.campaign)
    done = sync(campaign, args.remote)
    renderer.note(f"synced with {done.remote}" + (" (merged)" if done.merged else "")
                  + (f" after {done.pushes} push attempts" if done.pushes > 1 else ""))
    return 0


def _get(args: argparse.Namespace, renderer: _Plain) -> int:
    from expegit import large

    campaign = Campaign.open(args.campaign)
    folder = records.find(campaign.runs, args.run)
    rel = folder.relative_to(campaign.root)
    paths = [str(rel / p) for p in args.paths] or [str(rel)]
    got = large.get(campaign, paths)
    renderer.note(f"{len(got)} large file(s) present under {rel}")
    return 0


COMMANDS = {"init": _init, "clone": _clone, "status": _status, "show": _show,
            "export": _export, "remove": _remove, "update-code": _update_code, "sync": _sync,
            "get": _get}


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
