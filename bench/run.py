"""Run every benchmark of the project and print one table (medians; ratios to the peer).

    python -m bench.run [--quick]

Needs the test bed up (tests/testbed/up.sh) for the cluster benchmarks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (  # noqa: E402
    batch_scale,
    batch_throughput,
    exec_throughput,
    expegit_bench,
    first_output,
    local_throughput,
    parasearch_fidelity,
    parasearch_sampler_time,
    parasearch_throughput,
)
from tests.conftest import load_testbed  # noqa: E402


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--quick", action="store_true", help="fewer executions and repeats")
    args.add_argument("--scale-seconds", type=float, default=60,
                      help="how long the 100,000-execution batch runs in all (0: to the end)")
    options = args.parse_args()
    testbed = load_testbed()
    rows = []
    n, repeats = (200, 1) if options.quick else (600, 3)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as keep:  # see bench.scratch
        os.chmod(keep, 0o755)
        rows += exec_throughput.run(testbed, n=n, repeats=repeats, keep_in=keep)
        rows += first_output.run(testbed, repeats=3 if options.quick else 7, keep_in=keep)
        rows += batch_throughput.run(testbed, n=300 if options.quick else 2000,
                                     repeats=1 if options.quick else 3, keep_in=keep)
        rows += local_throughput.run(n=500 if options.quick else 2000,
                                     repeats=1 if options.quick else 3, keep_in=keep)
    total = 20 if options.quick else (options.scale_seconds or float("inf"))
    rows += batch_scale.run(n=100_000, first=min(30, total / 2), total=total)
    for search_bench in (parasearch_throughput, parasearch_sampler_time, parasearch_fidelity,
                         expegit_bench):
        rows += search_bench.run(quick=options.quick)
    table = Table(title="orchestra benchmarks (medians; ratio: ours / this row's tool, or "
                        "this row / the peer for latencies)")
    for column in ("benchmark", "tool", "value", "unit", "ratio", "driver CPU ms/exec"):
        table.add_column(column)
    for row in rows:
        cpu = row.get("cpu_ms")
        table.add_row(row["benchmark"], row["tool"], f"{row['value']:.3g}", row["unit"],
                      f"{row['ratio']:.2f}", "" if cpu is None else f"{cpu:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
