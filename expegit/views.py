"""Looking at a campaign: counts by state and commit, failures, and the table of every
execution (parameters and metrics as columns) for CSV or JSON export. Data only: the CLI
prints."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import attrs

from expegit.record import Record, all_records

FIXED = ("id", "state", "exit_code", "commit", "patch", "script", "arguments", "profile", "node",
         "slot", "started", "ended", "duration", "features", "by", "run", "rerun_of")


@attrs.frozen
class Failure:
    record: Record
    tail: tuple[str, ...]  # last lines of its stderr


@attrs.frozen
class Status:
    counts: dict[tuple[str, str], int]  # (state, commit) -> executions
    failures: tuple[Failure, ...]
    total: int


def status(runs: Path, tail: int = 2, failures: int = 10) -> Status:
    counts: Counter[tuple[str, str]] = Counter()
    failed: list[Record] = []
    for rec in all_records(runs):
        counts[(rec.state, rec.commit[:12] + ("+patch" if rec.patch else ""))] += 1
        if rec.state in ("failed", "lost"):
            failed.append(rec)
    failed.sort(key=lambda r: r.ended or 0, reverse=True)
    out = []
    for rec in failed[:failures]:
        stderr = runs / rec.id / "stderr"
        lines = stderr.read_text(errors="replace").strip().splitlines()[-tail:] \
            if stderr.is_file() and not stderr.is_symlink() else []
        out.append(Failure(rec, tuple(lines)))
    return Status(dict(counts), tuple(out), sum(counts.values()))


def table(runs: Path) -> tuple[list[str], list[dict[str, object]]]:
    """Columns and rows: fixed fields, then `param.NAME` and `metric.NAME` columns."""
    rows, params, metrics = [], set(), set()
    for rec in all_records(runs):
        row: dict[str, object] = {k: getattr(rec, k) for k in FIXED}
        row["arguments"] = " ".join(rec.arguments)
        row["features"] = " ".join(repr(f) for f in rec.features)
        for k, v in rec.parameters.items():
            row[f"param.{k}"] = v
            params.add(k)
        for k, v in rec.metrics.items():
            row[f"metric.{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None \
                else json.dumps(v)
            metrics.add(k)
        rows.append(row)
    rows.sort(key=lambda r: (r["started"] or 0, r["id"]))
    columns = [*FIXED, *(f"param.{k}" for k in sorted(params)),
               *(f"metric.{k}" for k in sorted(metrics))]
    return columns, rows


def export(runs: Path, fmt: str) -> str:
    columns, rows = table(runs)
    if fmt == "json":
        return json.dumps(rows, indent=1, default=str) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
