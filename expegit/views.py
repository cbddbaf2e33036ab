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

from expegit.catalog import records
from expegit.record import DEFAULTS, Record

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
    failed: list[dict] = []
    for data in records(runs):
        state = data["state"]
        counts[(state, data["commit"][:12] + ("+patch" if data.get("patch") else ""))] += 1
        if state in ("failed", "lost"):
            failed.append(data)
    failed.sort(key=lambda d: d.get("ended") or 0, reverse=True)
    out = []
    for data in failed[:failures]:
        rec = Record.from_data(data)
        stderr = runs / rec.id / "stderr"
        lines = stderr.read_text(errors="replace").strip().splitlines()[-tail:] \
            if stderr.is_file() and not stderr.is_symlink() else []
        out.append(Failure(rec, tuple(lines)))
    return Status(dict(counts), tuple(out), sum(counts.values()))


def table(runs: Path) -> tuple[list[str], list[dict[str, object]]]:
    """Columns and rows: fixed fields, then `param.NAME` and `metric.NAME` columns."""
    rows, params, metrics = [], set(), set()
    defaults = {k: DEFAULTS.get(k) for k in FIXED}
    for data in records(runs):
        row: dict[str, object] = {k: data.get(k, d) for k, d in defaults.items()}
        row["arguments"] = " ".join(row["arguments"])
        row["features"] = " ".join(repr(f) for f in row["features"])
        for k, v in (data.get("parameters") or {}).items():
            row[f"param.{k}"] = v
            params.add(k)
        for k, v in (data.get("metrics") or {}).items():
            row[f"metric.{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None \
                else json.dumps(v)
            metrics.add(k)
        rows.append(row)
    rows.sort(key=lambda r: (r["started"] or 0, r["id"]))
    columns = [*FIXED, *(f"param.{k}" for k in sorted(params)),
               *(f"metric.{k}" for k in sorted(metrics))]
    return columns, rows


def export(runs: Path, fmt: str) -> str:
    """CSV (a header, then a row per execution) or JSON (a list of objects, one a line)."""
    columns, rows = table(runs)
    if fmt == "json":  # json's C encoder serves only compact output: one object a line
        if not rows:
            return "[]\n"
        return "[\n" + ",\n".join(json.dumps(r, default=str) for r in rows) + "\n]\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([r.get(c, "") for c in columns] for r in rows)
    return buffer.getvalue()
