"""2,000 executions of `true` on the 3-node bed: `runaway batch` (full lifecycle: journal, run
folder, code present, outputs fetched) against a raw asyncssh loop with the same channels,
GNU parallel -S over the same nodes, and srun per task — interleaved in one run."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from bench import scratch
from bench.exec_throughput import _raw
from bench.raw_loop import NODES

REPO = Path(__file__).resolve().parents[1]
SLOTS = 8  # per node, = channels per node for the peers


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _profile(testbed, folder: Path, agent: bool = True, reach: str = "ssh") -> Path:
    path = folder / f"bench-slurm-{agent}-{reach}.yml"
    path.write_text(yaml.safe_dump({
        "name": "bench-slurm",
        "ssh": {"host": "login", "user": testbed.user, "identity": [str(testbed.key)],
                "known_hosts": str(testbed.known_hosts)},
        "scheduler": {"kind": "slurm", "nodes": 3, "walltime": "30m",
                      "options": ["--exclusive"]},
        "slots": SLOTS, "directory": "~/.orchestra-bench", "agent": agent, "reach": reach}))
    return path


def _wrapper(testbed, n: int, folder: Path) -> tuple[float, float]:
    return _runaway(testbed, n, folder, agent=False)


def _direct(testbed, n: int, folder: Path) -> tuple[float, float]:
    return _runaway(testbed, n, folder, reach="direct")


def _runaway(testbed, n: int, folder: Path, agent: bool = True,
             reach: str = "ssh") -> tuple[float, float]:
    code = folder / "code"
    code.mkdir(exist_ok=True)
    (code / "true.sh").write_text("true\n")
    name = f"b{uuid.uuid4().hex[:6]}"
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "runaway", "batch",
                           str(_profile(testbed, folder, agent, reach)),
                           str(code / "true.sh"), "--name", name, "-x", str(n), "--json"],
                          cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    return wall, _children_cpu() - cpu  # kept to the end: local_throughput KEPT


def _parallel(testbed, n: int) -> tuple[float, float]:
    ssh = (f"ssh -i {testbed.key} -o UserKnownHostsFile={testbed.known_hosts} "
           "-o StrictHostKeyChecking=yes -l " + testbed.user)
    hosts = ",".join(f"{SLOTS}/{node}" for node in NODES)
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(["parallel", "--will-cite", "--ssh", ssh, "-S", hosts, "true", ":::",
                           *map(str, range(n))], capture_output=True)
    assert done.returncode == 0, f"GNU parallel: {done.returncode} jobs failed"
    return time.perf_counter() - start, _children_cpu() - cpu


def _srun(testbed, n: int) -> tuple[float, float]:
    start = time.perf_counter()
    testbed.ssh("login", f"seq {n} | xargs -P {SLOTS * len(NODES)} -I{{}} srun -n1 -N1 true",
                check=True, timeout=3600)
    return time.perf_counter() - start, float("nan")


def _asyncssh(testbed, n: int) -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu, start = usage.ru_utime + usage.ru_stime, time.perf_counter()
    asyncio.run(_raw(testbed, n))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime - cpu


def _asyncssh_script(testbed, n: int, jump: str = "") -> tuple[float, float]:
    """The same loop as a user runs it: a script, timed from its start (interpreter and
    asyncssh's import included), as `runaway batch` is timed from its own."""
    cpu, start = _children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.raw_loop", testbed.user, str(testbed.key),
                    str(testbed.known_hosts), str(n), *([jump] if jump else [])],
                   cwd=REPO, check=True)
    return time.perf_counter() - start, _children_cpu() - cpu


def _asyncssh_jump(testbed, n: int) -> tuple[float, float]:
    """That script reaching the nodes through login, as runaway's default `reach: ssh`."""
    return _asyncssh_script(testbed, n, jump="login")


def run(testbed, n: int = 2000, repeats: int = 3, keep_in: str | None = None) -> list[dict]:
    if shutil.which("parallel") is None:
        raise SystemExit("bench: GNU parallel is missing (apt-get install parallel)")
    tools = {"runaway batch (Slurm, 3 nodes x 8 slots)": _runaway,
             "runaway batch, reach: direct (no login hop)": _direct,
             "runaway batch, shell wrapper (agent: false)": _wrapper,
             "raw asyncssh loop (3 x 8 channels)": _asyncssh,
             "raw asyncssh loop, run as a script (start-up included)": _asyncssh_script,
             "raw asyncssh loop as a script, through login": _asyncssh_jump,
             "GNU parallel -S (3 x 8 jobs)": _parallel,
             "srun per task (24 at a time)": _srun}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
    with scratch.folder(keep_in) as tmp:
        folder = Path(tmp)
        os.chmod(folder, 0o755)
        for _ in range(repeats):
            for name, measure in tools.items():
                args = (testbed, n, folder) if measure in (_runaway, _direct, _wrapper) \
                    else (testbed, n)
                times[name].append(measure(*args))
    rates = {name: statistics.median(n / wall for wall, _ in values)
             for name, values in times.items()}
    ours = rates["runaway batch (Slurm, 3 nodes x 8 slots)"]
    rows = []
    for name, values in times.items():
        cpu = statistics.median(c / n * 1000 for _, c in values)
        rows.append({"benchmark": f"batch of {n} `true`", "tool": name, "value": rates[name],
                     "unit": "exec/s", "ratio": ours / rates[name],
                     "cpu_ms": None if cpu != cpu else cpu})
    return rows
