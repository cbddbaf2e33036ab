"""Memory and restart at scale: a 100,000-execution batch of `true` on the local profile.

The driver runs for a first stretch while its RSS is sampled, is drained (SIGINT), then
`--resume` start-up is measured on the 100,000-row journal (process start to its first
execution started), and the resumed driver goes on (to the end with `total=inf`), still
sampled: memory must stay flat while executions stream through the journal."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import yaml

COMPLETED = "completed executions"


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _start(folder: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runaway", "batch", "scale.yml", "true.sh",
                             "--name", "scale", "--json", *extra], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _first_start(proc: subprocess.Popen) -> None:
    """Wait for the first execution to start, then keep draining the driver's output (a full
    pipe would stall it)."""
    for line in proc.stdout:
        if json.loads(line)["event"] == "ExecutionStarted":
            break
    threading.Thread(target=proc.stdout.read, daemon=True).start()


def _sample(proc: subprocess.Popen, until: float, samples: list, origin: float) -> None:
    while time.perf_counter() < until and proc.poll() is None:
        samples.append((time.perf_counter() - origin, _rss_mb(proc.pid)))
        time.sleep(0.5)


def _completed(folder: Path) -> int:
    db = sqlite3.connect(folder / "batch" / "scale" / "journal.sqlite")
    try:
        return db.execute("SELECT COUNT(*) FROM executions WHERE state = 'completed'").fetchone()[0]
    finally:
        db.close()


def _folder(where: str | None):
    if where is None:
        return tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
    return contextlib.nullcontext(tempfile.mkdtemp(dir=where))


def run(n: int = 100_000, first: float = 30.0, total: float = 60.0,
        where: str | None = None) -> list[dict]:
    """`where`: make the folders there and keep them (see `compare`); default: a temporary
    folder, removed at the end."""
    with _folder(where) as tmp, _folder(where) as remote:
        folder = Path(tmp)
        (folder / "true.sh").write_text("true\n")
        (folder / "scale.yml").write_text(yaml.safe_dump({
            "name": "scale", "scheduler": "local", "slots": 8, "directory": remote}))
        origin = time.perf_counter()
        proc = _start(folder, "-x", str(n))
        _first_start(proc)
        created = time.perf_counter() - origin
        samples: list[tuple[float, float]] = []
        _sample(proc, origin + first, samples, origin)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        start = time.perf_counter()
        resumed = _start(folder, "--resume")
        _first_start(resumed)
        restart = time.perf_counter() - start
        _sample(resumed, origin + total, samples, origin)
        if resumed.poll() is None:
            resumed.send_signal(signal.SIGINT)
        resumed.wait(timeout=120)
        elapsed = time.perf_counter() - origin
        done = _completed(folder)
    span = samples[-1][0]
    early = [rss for t, rss in samples if t < span / 4]
    late = [rss for t, rss in samples if t >= span / 2]
    label = f"batch of {n:,} on local ({done:,} completed in {elapsed:.0f} s)"
    return [
        {"benchmark": label, "tool": COMPLETED, "value": done, "unit": "executions",
         "ratio": 1.0},
        {"benchmark": label, "tool": "driver RSS, first quarter (peak)", "value": max(early),
         "unit": "MiB", "ratio": 1.0},
        {"benchmark": label, "tool": "driver RSS, second half (peak)", "value": max(late),
         "unit": "MiB", "ratio": max(late) / max(early)},
        {"benchmark": label, "tool": "start to first execution (100k-row journal made)",
         "value": created, "unit": "s", "ratio": 1.0},
        {"benchmark": label, "tool": "--resume start to first execution", "value": restart,
         "unit": "s", "ratio": restart / created},
    ]


def compare(base: str, pairs: int = 3, n: int = 100_000, total: float = 60.0) -> list[dict]:
    """Completed executions in `total` seconds, this tree's tools against an older checkout's
    (`base`, e.g. a `git worktree` of the code before the node agent; put first on the
    drivers' PYTHONPATH), in interleaved pairs. Every run's folders are kept until the end: on
    this machine's ext4 a batch made just after 150,000 files were removed ran up to a quarter
    slower."""
    here = str(Path(__file__).resolve().parent.parent)
    done: dict[str, list[int]] = {"base": [], "this tree": []}
    keep = tempfile.mkdtemp(prefix="batch-scale-")
    try:
        for _ in range(pairs):
            for name, tree in (("base", base), ("this tree", here)):
                with mock.patch.dict(os.environ, PYTHONPATH=tree):  # the drivers' code
                    rows = run(n, total / 2, total, where=keep)
                done[name].append(next(r["value"] for r in rows if r["tool"] == COMPLETED))
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    label = f"batch of {n:,} on local: completed in {total:.0f} s, {pairs} interleaved pairs"
    median = {name: statistics.median(values) for name, values in done.items()}
    return [{"benchmark": label, "tool": f"{name} ({', '.join(f'{v:,}' for v in values)})",
             "value": median[name], "unit": "executions",
             "ratio": median["this tree"] / median[name]} for name, values in done.items()]


if __name__ == "__main__":
    against = sys.argv.index("--against") + 1 if "--against" in sys.argv else 0
    for row in compare(sys.argv[against]) if against else run():
        print(f"{row['tool']:55s} {row['value']:10,.2f} {row['unit']}  ratio {row['ratio']:.2f}")
