"""Finding batches by name: `./batch/NAME` (and `./sched/NAME` for searches), the latest one
when no name is given, and names that are names (never paths)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from liborchestra.errors import OrchestraError
from liborchestra.journal import Journal

KINDS = ("batch", "sched")  # the folders under the current one that hold named runs
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
JOURNAL = "journal.sqlite"


def is_name(text: str) -> bool:
    return bool(_NAME.fullmatch(text)) and ".." not in text


def check_name(name: str) -> str:
    """A batch name is one folder name: letters, digits, `.`, `_`, `+`, `-`; no `/` or `..`."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise OrchestraError(f"--name {name!r}: expected a name (letters, digits, '.', '_', "
                             "'+', '-', starting with a letter or digit), not a path; use "
                             "-o/--output DIR to choose the folder")
    return name


def journals(root: Path | None = None) -> list[Path]:
    """Every journal of the batches and searches under `root` (default: here), oldest first."""
    root = root or Path.cwd()
    found = [p for kind in KINDS for p in (root / kind).glob(f"*/{JOURNAL}")]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def locate(args: argparse.Namespace, kind: str | None = None) -> Path:
    """The journal of `args.name` (with `-o DIR`, the batch in DIR); the latest batch when
    `args.name` is None. One clear error when there is none."""
    output = getattr(args, "output", None)
    name = getattr(args, "name", None)
    if output is not None:
        path = output.resolve() / JOURNAL
        if not path.is_file():
            raise OrchestraError(f"no batch in {output} (no {path})")
        return path
    kinds = (kind,) if kind else KINDS
    if name is None:
        found = [p for p in journals() if p.parent.parent.name in kinds]
        if not found:
            raise OrchestraError(f"no batch under {Path.cwd()} (looked in "
                                 f"{', '.join(k + '/' for k in kinds)}); give a NAME")
        return found[-1].resolve()
    check_name(name)
    for k in kinds:
        path = (Path(k) / name / JOURNAL).resolve()
        if path.is_file():
            return path
    known = sorted({p.parent.name for p in journals()})
    hint = f"; batches here: {', '.join(known[-8:])}" if known else ""
    raise OrchestraError(f"no batch named {name!r} (no {Path(kinds[0]) / name / JOURNAL})"
                         + hint)


def open_journal(args: argparse.Namespace, kind: str | None = None) -> Journal:
    return Journal.open(locate(args, kind))


def failures(journal: Journal, limit: int = 10) -> list[tuple[str, str]]:
    """The first failed and lost executions, each with why and its last stderr lines."""
    out = []
    for row in journal.rows("failed", limit=limit) + journal.rows("lost", limit=limit):
        stderr = journal.path.parent / row.uuid / "stderr"
        tail = stderr.read_text(errors="replace").strip().splitlines()[-2:] \
            if stderr.is_file() else []
        if row.state == "failed":  # exit code, or why it could not run (its code unreadable)
            why = f"exit {row.ecode}" if row.ecode is not None else (row.message or "failed")
        else:
            why = row.message or "lost"
        out.append((f"#{row.seq} {row.label or '(no arguments)'}",
                    why + (": " + " | ".join(tail) if tail else "")))
    return out


def post_failures(journal: Journal) -> int:
    """How many executions' post-command exited non-zero (kept in the row's payload)."""
    query = ("SELECT COUNT(*) FROM executions WHERE json_extract(payload, '$.post') IS NOT NULL "
             "AND json_extract(payload, '$.post') != 0")
    return int(journal.db.execute(query).fetchone()[0])
