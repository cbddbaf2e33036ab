"""The same 100-trial random search of the same Branin script on the local profile, three tools
side by side in one run, interleaved run by run (A, B, C, A, B, C, ...) so that the load of a
shared machine falls on all of them alike:

- `parasearch --algo random --n 100` (its whole lifecycle: store, journal, run folders);
- `orion hunt --n-workers <slots>` (Oríon 0.2.7 from its own virtualenv, results-file
  contract, its default PickledDB);
- `runaway batch -A` of the same 100 parameter sets (the floor: no sampler, no store);
- and, for scale, `xargs -P <slots>` of the same 100 commands (no tool at all).

    .venv/bin/python -m bench.parasearch_throughput [--quick] [--n 100] [--repeats 3]
        [--orion /work/bench-venv/bin/orion]

Wall time is the whole command, interpreter start-up included. Medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ORION = Path(os.environ.get("BENCH_ORION", "/work/bench-venv/bin/orion"))
PRIORS = ("--x1~uniform(-5, 10)", "--x2~uniform(0, 15)")

# One script for all three tools: it prints the runaway contract line, and writes Oríon's
# results file when Oríon asks for one. Arguments come as --x1=V (ours) or --x1 V (Oríon).
# The interpreter is named outright: a pyenv shim on PATH would double each trial's start-up.
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
BRANIN = """#!{python}
import json, math, os, sys
argv, params, i = sys.argv[1:], {}, 0
while i < len(argv):
    key = argv[i].lstrip("-")
    if "=" in key:
        key, value = key.split("=", 1)
    else:
        i += 1
        value = argv[i]
    params[key] = float(value)
    i += 1
x1, x2 = params["x1"], params["x2"]
b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
f = (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10
print(f"RUNAWAY_FEATURES: {f}")
if os.environ.get("ORION_RESULTS_PATH"):
    with open(os.environ["ORION_RESULTS_PATH"], "w") as out:
        json.dump([{"name": "objective", "type": "objective", "value": f}], out)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(argv: list[str], cwd: Path) -> tuple[float, float, str]:
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[:3])} ... failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return wall, _children_cpu() - cpu, done.stdout


class Bed:
    """A scratch folder: the script, a local profile with `slots` slots, the batch's args."""

    def __init__(self, folder: Path, n: int, slots: int) -> None:
        self.folder, self.n, self.slots = folder, n, slots
        code = folder / "code"
        code.mkdir()
        self.script = code / "branin.py"
        self.script.write_text(BRANIN.replace("{python}", PYTHON, 1))
        self.script.chmod(0o755)
        self.profile = folder / "bench-local.yml"
        self.profile.write_text(yaml.safe_dump({
            "name": "bench-local", "scheduler": {"kind": "local"}, "slots": slots,
            "directory": str(folder / "remote")}))
        self.bin = Path(sys.executable).parent

    def parasearch(self, seed: int) -> tuple[float, float, int]:
        name = f"p{uuid.uuid4().hex[:8]}"
        wall, cpu, out = _timed([str(self.bin / "parasearch"), "--algo", "random", "--n",
                                 str(self.n), "--seed", str(seed), "--name", name, "--json",
                                 str(self.profile), str(self.script), "--", *PRIORS],
                                self.folder)
        summary = json.loads(out.strip().splitlines()[-1])
        shutil.rmtree(self.folder / "search" / name)
        return wall, cpu, int(summary["completed"])

    def _args(self, seed: int) -> Path:
        """The same parameter sets parasearch's random sampler draws with this seed."""
        args = self.folder / f"args-{seed}.txt"
        if not args.exists():
            from parasearch import Space, create_sampler

            space = Space.parse([p[2:] for p in PRIORS])
            sampler = create_sampler("random", space, seed=seed)
            lines = []
            for _ in range(self.n):
                params = sampler.ask().params
                lines.append(f"--x1={params['x1']!r} --x2={params['x2']!r}")
            args.write_text("\n".join(lines) + "\n")
        return args

    def batch(self, seed: int) -> tuple[float, float, int]:
        name = f"b{uuid.uuid4().hex[:8]}"
        output = self.folder / "batch" / name
        wall, cpu, out = _timed([str(self.bin / "runaway"), "batch", str(self.profile),
                                 str(self.script), "-A", str(self._args(seed)), "--name", name,
                                 "--json", "-o", str(output)], self.folder)
        summary = json.loads(out.strip().splitlines()[-1])
        shutil.rmtree(output)
        return wall, cpu, int(summary["counts"].get("completed", 0))

    def xargs(self, seed: int) -> tuple[float, float, int]:
        """The script alone, `slots` at a time, no tool at all: what the machine can do."""
        wall, cpu, out = _timed(["xargs", "-a", str(self._args(seed)), "-P", str(self.slots),
                                 "-L", "1", str(self.script)], self.folder)
        return wall, cpu, out.count("RUNAWAY_FEATURES:")

    def orion(self, seed: int) -> tuple[float, float, int]:
        name = f"o{uuid.uuid4().hex[:8]}"
        db = self.folder / f"{name}.pkl"
        config = self.folder / f"{name}.yml"
        config.write_text(yaml.safe_dump({
            "storage": {"database": {"type": "pickleddb", "host": str(db)}},
            "experiment": {"max_trials": self.n, "algorithms": {"random": {"seed": seed}}}}))
        wall, cpu, out = _timed([str(ORION), "hunt", "-c", str(config), "-n", name,
                                 "--n-workers", str(self.slots), str(self.script), *PRIORS],
                                self.folder)
        found = re.search(r"trials completed: (\d+)", out)
        db.unlink(missing_ok=True)
        return wall, cpu, int(found.group(1)) if found else 0


TOOLS = {"parasearch --algo random": "parasearch", "orion hunt (PickledDB)": "orion",
         "runaway batch -A (floor)": "batch", "xargs -P <slots> (no tool)": "xargs"}


def measure(n: int = 100, repeats: int = 3, slots: int | None = None) -> dict:
    """Interleaved runs; each tool's (wall, cpu, completed) per repeat."""
    if not ORION.exists():
        raise SystemExit(f"bench: {ORION} is missing: python3 -m venv /work/bench-venv && "
                         "/work/bench-venv/bin/pip install orion==0.2.7 typing_extensions")
    slots = slots or os.cpu_count() or 1
    runs: dict[str, list[tuple[float, float, int]]] = {tool: [] for tool in TOOLS}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="parasearch-bench-") as tmp:
        bed = Bed(Path(tmp), n, slots)
        for rep in range(repeats):
            for tool, method in TOOLS.items():
                result = getattr(bed, method)(seed=rep + 1)
                runs[tool].append(result)
                print(f"  repeat {rep + 1}/{repeats} {tool:26s} {result[0]:6.2f} s  "
                      f"{result[2]} completed", file=sys.stderr, flush=True)
            load.append(os.getloadavg()[0])
    return {"n": n, "slots": slots, "repeats": repeats, "runs": runs, "load": load}


def rows(result: dict) -> list[dict]:
    n, runs = result["n"], result["runs"]
    wall = {t: statistics.median(w for w, _, _ in v) for t, v in runs.items()}
    rate = {t: statistics.median(c / w for w, _, c in v) for t, v in runs.items()}
    cpu = {t: statistics.median(c / max(1, k) * 1000 for _, c, k in v) for t, v in runs.items()}
    ours = "parasearch --algo random"
    out = []
    for tool in TOOLS:
        out.append({"benchmark": f"random search, {n} Branin trials, local x{result['slots']}",
                    "tool": tool, "value": rate[tool], "unit": "trials/s",
                    "ratio": rate[ours] / rate[tool], "cpu_ms": cpu[tool],
                    "wall": wall[tool], "wall_ratio": wall[ours] / wall[tool],
                    "completed": [k for _, _, k in runs[tool]]})
    return out


def print_table(result: dict, table_rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    load = ", ".join(f"{x:.2f}" for x in result["load"])
    table = Table(title=f"{result['n']}-trial random search of Branin on local "
                        f"({result['slots']} slots), medians of {result['repeats']} "
                        "interleaved repeats (A, B, C, A, B, C...)",
                  caption=f"1-min load average before and after each round: {load} "
                          f"on {os.cpu_count()} cores shared with other work; ratios are "
                          "parasearch / the row's tool")
    for column in ("tool", "trials/s", "ratio (rate)", "wall s", "ratio (wall)",
                   "CPU ms/trial (tool + script)", "completed per run"):
        table.add_column(column)
    for r in table_rows:
        table.add_row(r["tool"], f"{r['value']:.2f}", f"{r['ratio']:.2f}x", f"{r['wall']:.2f}",
                      f"{r['wall_ratio']:.2f}x", f"{r['cpu_ms']:.0f}",
                      " ".join(map(str, r["completed"])))
    Console(width=160).print(table)
    by = {r["tool"]: r for r in table_rows}
    ours = by["parasearch --algo random"]
    speedup = ours["value"] / by["orion hunt (PickledDB)"]["value"]
    floor = ours["wall"] / by["runaway batch -A (floor)"]["wall"]
    print(f"target >= 5x Oríon's trials/s: {speedup:.2f}x -> {'met' if speedup >= 5 else 'MISSED'}")
    print(f"target <= 1.3x the batch's wall time: {floor:.2f}x -> "
          f"{'met' if floor <= 1.3 else 'MISSED'}")


def run(quick: bool = False) -> list[dict]:
    """For bench.run: the rows of the umbrella table."""
    result = measure(n=100, repeats=1 if quick else 3)
    return [{k: r[k] for k in ("benchmark", "tool", "value", "unit", "ratio", "cpu_ms")}
            for r in rows(result)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--n", type=int, default=100, help="trials per search (default 100)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slots", type=int, help="local slots = Oríon workers (default: cores)")
    parser.add_argument("--json", type=Path, help="also write the raw runs here")
    options = parser.parse_args()
    result = measure(n=options.n, repeats=1 if options.quick else options.repeats,
                     slots=options.slots)
    table_rows = rows(result)
    print_table(result, table_rows)
    if options.json:
        options.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
