"""`runaway clean PROFILE [--dry-run]`: the code archives, run folders and node agent files
runaway left on a profile's remote folder, with sizes, and their removal (never a run that
still runs, nor the files of an agent that does).

What the batches under the current folder know helps: a run folder a journal here still
expects (its driver runs, or a resume would recover it) is kept, and every run folder is
shown with the batch it belongs to."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from liborchestra.cleanup import Inventory, inventory, remove
from liborchestra.engine import Engine
from liborchestra.journal import driver_alive
from liborchestra.profile import load_profile
from liborchestra.transfer import CODE_CACHE_KEEP
from runaway import batches
from runaway.render import Renderer, size

SHOWN = 50  # run folders listed one by one; the totals count them all


def add_parser(sub) -> None:
    c = sub.add_parser(
        "clean", help="remove what runaway left on a profile's remote folder",
        description="List the code archives, run folders and node agent files runaway left "
                    "on PROFILE's remote folder (its `directory`, default ~/.orchestra), with "
                    "sizes, and remove them: never a run that still runs, one a batch here "
                    "still expects, an archive in use, this runaway's node agent, or the "
                    "spare run folders of an agent that runs. The code cache also prunes "
                    f"itself: it keeps the {CODE_CACHE_KEEP} most recently used archives.")
    c.add_argument("profile", help="profile name or .yml file")
    c.add_argument("--dry-run", action="store_true", help="list only; remove nothing")


def _known_runs(root: Path | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """From the journals here: run id -> why it must stay ("" : it may go), and run id ->
    its batch and number, for people."""
    keep: dict[str, str] = {}
    labels: dict[str, str] = {}
    for path in batches.journals(root):
        name = path.parent.name
        alive = driver_alive(path)
        db = sqlite3.connect(path, timeout=5)  # read only; not `mode=ro`: WAL needs its -shm
        try:
            rows = db.execute("SELECT seq, run, state, payload FROM executions "
                              "WHERE run IS NOT NULL").fetchall()
        except sqlite3.DatabaseError:
            continue
        finally:
            db.close()
        for seq, run, state, payload in rows:
            labels[run] = f"{name} #{seq}"
            if alive and state in ("submitted", "running"):
                keep[run] = f"its driver runs ({path.parent.parent.name} {name})"
            elif state in ("submitted", "running"):
                keep[run] = f"`runaway batch --resume --name {name}` recovers it"
            else:
                keep[run] = ""
            for attempt in json.loads(payload or "{}").get("history", []):
                if attempt.get("run"):
                    keep.setdefault(attempt["run"], "")
                    labels.setdefault(attempt["run"], f"{name} #{seq}")
    for record in (root or Path.cwd()).glob("runs/*/runaway.json"):  # exec runs, fetched
        keep.setdefault(record.parent.name, "")
        labels.setdefault(record.parent.name, "exec")
    return keep, labels


async def clean(args: argparse.Namespace, renderer: Renderer, _signals) -> int:
    profile = load_profile(args.profile)
    known, labels = _known_runs()
    async with Engine(profile) as engine:
        found = await inventory(engine, known)
        gone = found if args.dry_run else await remove(engine, found)
    _show(found, labels, args.dry_run)
    for note in found.notes:
        renderer.note(note)
    verb = "would remove" if args.dry_run else "removed"
    runs = [r for r in gone.runs if not r.keep]
    archives = [a for a in gone.archives if not a.keep]
    kept_runs = [r for r in found.runs if r.keep]
    kept_archives = [a for a in found.archives if a.keep]
    total = sum(r.size for r in runs) + sum(a.size for a in archives)
    print(f"{profile.name} ({found.root}): {verb} {len(runs)} run folder(s) and "
          f"{len(archives)} code archive(s), {size(total)}; kept {len(kept_runs)} run "
          f"folder(s) ({size(sum(r.size for r in kept_runs))}) and {len(kept_archives)} "
          f"archive(s) ({size(sum(a.size for a in kept_archives))})")
    for place in sorted({a.place for a in found.archives}):
        cache = [a for a in found.archives if a.place == place and not a.partial]
        print(f"code cache on {place}: {len(cache)} archive(s), "
              f"{size(sum(a.size for a in cache))} before cleaning; each upload prunes it to "
              f"the {CODE_CACHE_KEEP} most recently used")
    if found.agent_files:
        agent_files = [f for f in gone.agent_files if not f.keep]
        kept_agent_files = [f for f in found.agent_files if f.keep]
        print(f"node agent files: {verb} {len(agent_files)} folder(s), "
              f"{size(sum(f.size for f in agent_files))}; kept {len(kept_agent_files)} "
              f"({size(sum(f.size for f in kept_agent_files))})")
    running = [r for r in kept_runs if r.keep == "running" and r.run in labels]
    for run in running:
        batch = labels[run.run].split(" #")[0]
        renderer.note(f"{run.run} ({labels[run.run]}) still runs: `runaway cancel {batch}` "
                      "stops it")
    return 0


def _show(found: Inventory, labels: dict[str, str], dry_run: bool) -> None:
    if not found.runs and not found.archives and not found.agent_files:
        print(f"nothing under {found.root}")
        return
    gone = "would remove" if dry_run else "removed"
    table = Table(title=f"{found.root}")
    for column in ("what", "name", "where", "size", "age", "batch", "status"):
        table.add_column(column, justify="right" if column in ("size", "age") else "left")
    for archive in sorted(found.archives, key=lambda a: a.age):
        what = "partial upload" if archive.partial else "code archive"
        table.add_row(what, escape(archive.name[:16]), escape(archive.place),
                      size(archive.size), _age(archive.age), "",
                      f"kept: {escape(archive.keep)}" if archive.keep else gone)
    for folder in sorted(found.agent_files, key=lambda f: (f.kind, f.age)):
        what = "node agent" if folder.kind == "agent" else "agent's spare run folders"
        table.add_row(what, escape(folder.name[:16] if folder.kind == "agent" else folder.name),
                      escape(folder.place), size(folder.size), _age(folder.age), "",
                      f"kept: {escape(folder.keep)}" if folder.keep else gone)
    runs = sorted(found.runs, key=lambda r: (not r.keep, r.age))  # what stays first
    for run in runs[:SHOWN]:
        state = "running" if run.keep == "running" else (
            f"exit {run.ecode}" if run.ecode is not None else "stopped")
        table.add_row(f"run folder ({state})", escape(run.run), escape(run.node or run.place),
                      size(run.size), _age(run.age), escape(labels.get(run.run, "")),
                      f"kept: {escape(run.keep)}" if run.keep else gone)
    if len(runs) > SHOWN:
        table.add_row(f"... {len(runs) - SHOWN} more run folders", "", "", "", "", "", "")
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)  # whole lines for pipes and files
    console.print(table)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
