"""`runaway results [NAME]` (one row per execution) and `runaway list` (the batches here).

Both read the journal only, through liborchestra.results: the web page and parasearch show the
same rows."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from liborchestra.errors import OrchestraError
from liborchestra.journal import Journal
from liborchestra.results import ResultRow, Value, result_rows, typed
from runaway import batches

FIXED = ("seq", "state", "ecode", "duration", "node", "attempts")


def add_parsers(sub) -> None:
    r = sub.add_parser(
        "results", help="one row per execution of a batch: parameters, state, metrics",
        description="One row per execution of the batch NAME (default: the latest): its "
                    "parameters (parsed from the arguments, one column each), state, exit "
                    "code, duration, node, objective and metrics (from results.json or "
                    "RUNAWAY_FEATURES:), and the post-command's status.")
    r.add_argument("name", nargs="?", help="the batch (default: the latest here)")
    r.add_argument("-o", "--output", type=Path,
                   help="batch folder (default ./batch/NAME)")
    r.add_argument("--format", choices=("table", "csv", "json"), default="table")
    r.add_argument("--sort", metavar="COLUMN",
                   help="sort by a column (e.g. lr, objective, duration); -COLUMN: descending "
                        "(write --sort=-objective)")
    r.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep rows where COLUMN=VALUE (or COLUMN!=VALUE); repeat to combine, "
                        "e.g. --filter state=failed")
    sub.add_parser("list", help="the batches and searches under this folder",
                   description="Name, kind, state, counts, start time and whether a driver "
                               "runs, for every batch in ./batch and search in ./sched.")


def flat(row: ResultRow) -> dict[str, Value | None]:
    """A row as columns: the fixed ones, then parameters, objective and metrics."""
    out: dict[str, Value | None] = {
        "seq": row.seq, "state": row.state, "ecode": row.ecode,
        "duration": None if row.duration is None else round(row.duration, 3),
        "node": row.node, "attempts": row.attempts}
    out.update(row.parameters)
    out["objective"] = row.objective
    out.update(row.metrics)
    out["post"] = row.post
    out.update(uuid=row.uuid, arguments=row.label, digest=row.digest,
               started=row.started, finished=row.finished, message=row.message)
    return out


def _filter(spec: str, columns: set[str]):
    name, op, value = _split(spec)
    if name not in columns:
        raise OrchestraError(f"--filter {spec!r}: no column {name!r}; columns: "
                             f"{', '.join(sorted(columns))}")
    wanted = typed(value)

    def keep(row: dict) -> bool:
        have = row.get(name)
        same = have == wanted or str(have) == value
        return same if op == "=" else not same
    return keep


def _split(spec: str) -> tuple[str, str, str]:
    for op in ("!=", "="):
        name, found, value = spec.partition(op)
        if found and name:
            return name, op, value
    raise OrchestraError(f"--filter {spec!r}: expected COLUMN=VALUE or COLUMN!=VALUE")


def _sort_key(name: str):
    def key(row: dict):
        value = row.get(name)
        if value is None:
            return (2, 0, "")  # missing values last
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, value, "")
        return (1, 0, str(value))
    return key


def select(rows: list[dict], filters: list[str], sort: str | None) -> list[dict]:
    """Rows filtered then sorted; one clear error for an unknown column."""
    columns = {k for row in rows for k in row} | set(FIXED)
    for spec in filters:
        keep = _filter(spec, columns)
        rows = [r for r in rows if keep(r)]
    if sort:
        descending = sort.startswith("-")
        name = sort.lstrip("-")
        if name not in columns:
            raise OrchestraError(f"--sort {sort!r}: no column {name!r}; columns: "
                                 f"{', '.join(sorted(columns))}")
        present = [r for r in rows if r.get(name) is not None]
        missing = [r for r in rows if r.get(name) is None]
        rows = sorted(present, key=_sort_key(name), reverse=descending) + missing
    return rows


def results(args: argparse.Namespace) -> int:
    journal = batches.open_journal(args)
    try:
        rows = result_rows(journal)
        name = journal.meta().get("name", journal.path.parent.name)
    finally:
        journal.close()
    flats = select([flat(r) for r in rows], args.filter, args.sort)
    if args.format == "json":
        by_seq = {r.seq: r for r in rows}
        json.dump([by_seq[f["seq"]].as_dict() for f in flats], sys.stdout, default=str)
        sys.stdout.write("\n")
        return 0
    columns = _columns(flats)
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        for row in flats:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        return 0
    shown = [c for c in columns if c not in ("uuid", "digest", "started", "finished", "message",
                                             "arguments")]
    table = Table(title=f"{name}: {len(flats)} of {len(rows)} executions")
    for column in shown:
        table.add_column(column, justify="right" if column in ("seq", "ecode", "duration")
                         else "left")
    for row in flats:
        table.add_row(*(_cell(row.get(c)) for c in shown))
    Console(highlight=False, width=max(100, min(240, Console().width))).print(table)
    return 0


def _columns(rows: list[dict]) -> list[str]:
    """Fixed columns, then every other column in order of first appearance; empty ones go."""
    order: dict[str, None] = dict.fromkeys(FIXED)
    for row in rows:
        order.update(dict.fromkeys(row))
    return [c for c in order if c in FIXED or any(r.get(c) is not None for r in rows)]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return escape(str(value))


def list_batches(args: argparse.Namespace) -> int:
    found = batches.journals()
    if not found:
        print(f"no batches under {Path.cwd()}", file=sys.stderr)
        return 0
    table = Table(title="batches")
    for column in ("name", "kind", "state", "executions", "started", "driver"):
        table.add_column(column)
    for path in found:
        journal = Journal.open(path)
        try:
            meta, counts, alive = journal.meta(), journal.counts(), journal.driver_alive()
        finally:
            journal.close()
        created = meta.get("created")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(created))) \
            if isinstance(created, (int, float)) else ""
        parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        table.add_row(escape(str(meta.get("name", path.parent.name))),
                      path.parent.parent.name, _overall(counts, alive),
                      f"{sum(counts.values())} ({parts})", started,
                      f"alive (pid {meta.get('driver_pid')})" if alive else "-")
    Console(highlight=False, width=max(100, min(240, Console().width))).print(table)
    return 0


def _overall(counts: dict[str, int], alive: bool) -> str:
    if alive:
        return "running"
    if set(counts) <= {"completed"}:
        return "completed"
    if set(counts) & {"queued", "submitted", "running"}:
        return "stopped (resumable)"
    if "cancelled" in counts:
        return "cancelled"
    return "finished with failures"
