"""One batch across three clusters: `runaway batch slurm,sge,local` against each cluster alone.

Each cluster gets SLOTS slots (Slurm: one node; Grid Engine: SLOTS slots of the `smp` PE;
local: SLOTS slots on this machine); tasks `sleep SECONDS`, so a cluster's throughput is
bounded by its slots, not by this machine's two cores. The target (issue 10): the three-cluster
batch of 3 x N tasks runs at >= 0.8x the sum of the three clusters' rates measured alone
(batches of N each). Alone and together are interleaved, `--repeats` times; medians.

    .venv/bin/python -m bench.cluster_throughput [--n 48] [--seconds 1] [--repeats 3]

Needs the test bed up (tests/testbed/up.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

SLOTS = 4


def profiles(testbed, folder: Path) -> dict[str, Path]:
    ssh = {"host": "login", "user": testbed.user, "identity": [str(testbed.key)],
           "known_hosts": str(testbed.known_hosts)}
    specs = {
        "slurm": {"ssh": ssh, "scheduler": {"kind": "slurm", "nodes": 1, "walltime": "30m",
                                             "options": ["--exclusive"]}, "slots": SLOTS},
        "sge": {"ssh": ssh, "scheduler": {"kind": "sge", "walltime": "30m"}, "slots": SLOTS},
        "local": {"scheduler": {"kind": "local"}, "slots": SLOTS},
    }
    paths = {}
    for name, spec in specs.items():
        path = folder / f"bench-{name}.yml"
        remote = "~/.orchestra-bench" if "ssh" in spec else str(folder / "remote")
        path.write_text(yaml.safe_dump({"name": name, **spec, "directory": remote}))
        paths[name] = path
    return paths


def batch(profile: str, n: int, seconds: float, folder: Path) -> float:
    """Executions per second of one `runaway batch` of n tasks (start to end, allocation
    included)."""
    script = folder / "code" / "sleep.sh"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"sleep {seconds}\n")
    name = f"c{uuid.uuid4().hex[:6]}"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "runaway", "batch", profile, str(script),
                           "--name", name, "-x", str(n), "--json"],
                          cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    return n / wall


def run(testbed, n: int = 48, seconds: float = 1.0, repeats: int = 3) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chmod(folder, 0o755)
        paths = profiles(testbed, folder)
        alone: dict[str, list[float]] = {name: [] for name in paths}
        together: list[float] = []
        for _ in range(repeats):
            for name, path in paths.items():
                alone[name].append(batch(str(path), n, seconds, folder))
            together.append(batch(",".join(str(p) for p in paths.values()), 3 * n, seconds,
                                  folder))
    rates = {name: statistics.median(values) for name, values in alone.items()}
    total = sum(rates.values())
    three = statistics.median(together)
    rows = [{"benchmark": f"{n} x `sleep {seconds}` per cluster ({SLOTS} slots each)",
             "tool": f"runaway batch {name} alone", "value": rate, "unit": "exec/s",
             "ratio": three / rate, "cpu_ms": None} for name, rate in rates.items()]
    rows.append({"benchmark": f"{n} x `sleep {seconds}` per cluster ({SLOTS} slots each)",
                 "tool": "sum of the three alone", "value": total, "unit": "exec/s",
                 "ratio": three / total, "cpu_ms": None})
    rows.append({"benchmark": f"{3 * n} x `sleep {seconds}` on slurm,sge,local",
                 "tool": "runaway batch slurm,sge,local", "value": three, "unit": "exec/s",
                 "ratio": three / total, "cpu_ms": None})
    return rows


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rich.console import Console
    from rich.table import Table

    from tests.conftest import load_testbed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="tasks per cluster")
    parser.add_argument("--seconds", type=float, default=1.0, help="each task sleeps this long")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    rows = run(load_testbed(), options.n, options.seconds, options.repeats)
    table = Table(title="one batch over three clusters against each alone (medians; ratio: "
                        "the three-cluster batch / this row)")
    for column in ("benchmark", "tool", "exec/s", "ratio"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["benchmark"], row["tool"], f"{row['value']:.2f}", f"{row['ratio']:.2f}")
    Console(width=160).print(table)
    three = rows[-1]
    verdict = "met" if three["ratio"] >= 0.8 else "NOT met"
    print(f"target: three-cluster rate >= 0.8x the sum alone -> {three['ratio']:.2f} ({verdict})")


if __name__ == "__main__":
    main()
