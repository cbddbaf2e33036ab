"""Memory and restart at scale: a 100,000-execution batch of `true` on the local profile.

The driver runs for a while (executions stream through the journal); its RSS is sampled
every half second to show it stays flat while thousands complete; then it is drained
(SIGINT) and `--resume` start-up time is measured on the 100,000-row journal (from process
start to its first execution started)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml


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


def run(n: int = 100_000, seconds: float = 60.0) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "true.sh").write_text("true\n")
        (folder / "scale.yml").write_text(yaml.safe_dump({
            "name": "scale", "scheduler": "local", "slots": 8,
            "directory": str(Path(tmp + "-remote"))}))
        start = time.perf_counter()
        proc = _start(folder, "-x", str(n))
        _first_start(proc)
        created = time.perf_counter() - start
        samples = []
        while time.perf_counter() - start < seconds and proc.poll() is None:
            samples.append((time.perf_counter() - start, _rss_mb(proc.pid)))
            time.sleep(0.5)
        seconds = time.perf_counter() - start
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        done = _completed(folder)
        start = time.perf_counter()
        resumed = _start(folder, "--resume")
        _first_start(resumed)
        restart = time.perf_counter() - start
        resumed.send_signal(signal.SIGINT)
        resumed.communicate(timeout=120)
    early = [rss for t, rss in samples if t < seconds / 4]
    late = [rss for t, rss in samples if t >= seconds / 2]
    label = f"batch of {n:,} on local (ran {seconds:.0f} s: {done:,} done)"
    return [
        {"benchmark": label, "tool": "driver RSS, first quarter (peak)", "value": max(early),
         "unit": "MiB", "ratio": 1.0},
        {"benchmark": label, "tool": "driver RSS, second half (peak)", "value": max(late),
         "unit": "MiB", "ratio": max(late) / max(early)},
        {"benchmark": label, "tool": "start to first execution (journal of 100k rows made)",
         "value": created, "unit": "s", "ratio": 1.0},
        {"benchmark": label, "tool": "--resume start to first execution", "value": restart,
         "unit": "s", "ratio": restart / created},
    ]


def _completed(folder: Path) -> int:
    import sqlite3

    db = sqlite3.connect(folder / "batch" / "scale" / "journal.sqlite")
    try:
        return db.execute("SELECT COUNT(*) FROM executions WHERE state = 'completed'").fetchone()[0]
    finally:
        db.close()
