"""2,000 `true` on this machine: `runaway batch local` (node agent, and the shell wrapper it
replaced) against HyperQueue's LocalCluster (a real server and worker, in-process) and GNU
parallel — each a whole process, as a user would time it, interleaved in one run.

HyperQueue runs from the bench environment (BENCH_HQ_PYTHON, default /work/bench-venv/bin/python,
`pip install hyperqueue`). Ours runs a script, `true.sh` (`true`, no execute bit: `bash
./true.sh` in its run folder); the peers run `true` itself (the issue's setup) and the same
`bash true.sh`; HyperQueue once more keeping its default outputs (a stdout and a stderr file
per task) in a folder per task (`task_dir`), the nearest to our run-folder contract.

`--dir PATH` puts every tool's folders there (default: a new temporary folder). It matters: on
this machine creating a file costs from 0.02 to 0.6 ms depending on where the folder is, and an
execution of ours creates about a dozen (run folder, output folder, record), so compare tools
within one run, and runs in one folder."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench import scratch

SLOTS = 8
# Each tool's outputs stay until the whole benchmark ends (KEPT): removing them between runs
# slows the next tool's file creation wherever freed inodes are slow to take again (ext4 without
# a journal, as on the test machine, skips each inode freed in the last minute).
HQ_PYTHON = os.environ.get("BENCH_HQ_PYTHON", "/work/bench-venv/bin/python")
_HQ = """
import sys
from hyperqueue import Job, LocalCluster
n, argv, output = int(sys.argv[1]), sys.argv[2].split(), sys.argv[3]
with LocalCluster() as cluster:
    cluster.start_worker()
    client = cluster.client()
    job = Job()
    for _ in range(n):
        if output == "files":
            job.program(argv, task_dir=True)
        else:
            job.program(argv, stdout=None, stderr=None)
    client.wait_for_jobs([client.submit(job)])
"""


def _timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert done.returncode == 0, f"{argv[:4]}: {done.stderr[-2000:]}"
    return wall


def _runaway(agent: bool):
    def measure(n: int, folder: Path) -> float:
        profile = folder / f"local-{agent}.yml"
        profile.write_text(yaml.safe_dump({"name": "bench-local", "scheduler": {"kind": "local"},
                                           "slots": SLOTS, "agent": agent,
                                           "directory": str(folder / "remote")}))
        code = folder / "code"
        code.mkdir(exist_ok=True)
        (code / "true.sh").write_text("true\n")
        name = f"b{time.monotonic_ns()}"
        wall = _timed([sys.executable, "-m", "runaway", "batch", str(profile),
                       str(code / "true.sh"), "--name", name, "-x", str(n), "--json"], folder)
        return wall  # outputs kept to the end: KEPT
    return measure


def _hyperqueue(command: str, output: str):
    def measure(n: int, folder: Path) -> float:
        work = folder / f"hq-{time.monotonic_ns()}"
        work.mkdir()
        (work / "true.sh").write_text("true\n")
        return _timed([HQ_PYTHON, "-c", _HQ, str(n), command, output], work)  # KEPT
    return measure


def _parallel(command: str):
    def measure(n: int, folder: Path) -> float:
        (folder / "true.sh").write_text("true\n")
        return _timed(["parallel", "--will-cite", "-j", str(SLOTS), *command.split(), ":::",
                       *map(str, range(n))], folder)
    return measure


def run(n: int = 2000, repeats: int = 3, where: str | None = None,
        keep_in: str | None = None) -> list[dict]:
    tools = {"runaway batch local (node agent)": _runaway(True),
             "runaway batch local (shell wrapper, agent: false)": _runaway(False),
             "HyperQueue 0.27 LocalCluster (1 worker), `true`": _hyperqueue("true", "none"),
             "HyperQueue, `bash true.sh` (our work)": _hyperqueue("bash true.sh", "none"),
             "HyperQueue, `bash true.sh`, stdout/stderr files, task_dir":
                 _hyperqueue("bash true.sh", "files")}
    if shutil.which("parallel"):
        tools["GNU parallel -j 8, `true`"] = _parallel("true")
        tools["GNU parallel -j 8, `bash true.sh`"] = _parallel("bash true.sh")
    walls: dict[str, list[float]] = {name: [] for name in tools}
    if where is not None:
        Path(where).mkdir(parents=True, exist_ok=True)
    with scratch.folder(keep_in, where) as tmp:
        folder = Path(tmp)
        for _ in range(repeats):
            for name, measure in tools.items():
                walls[name].append(measure(n, folder))
    rates = {name: statistics.median(n / w for w in values) for name, values in walls.items()}
    ours = rates["runaway batch local (node agent)"]
    return [{"benchmark": f"local batch of {n} `true`", "tool": name, "value": rate,
             "unit": "exec/s", "ratio": ours / rate} for name, rate in rates.items()]


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    where = sys.argv[sys.argv.index("--dir") + 1] if "--dir" in sys.argv else None
    for row in run(n=500 if quick else 2000, repeats=1 if quick else 3, where=where):
        print(f"{row['tool']:55s} {row['value']:8.1f} {row['unit']}  ratio {row['ratio']:.2f}")
