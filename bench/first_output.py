"""Time from `runaway exec` start to the script's first output line on the Slurm test bed,
both reach modes, against `ssh login srun -n1 script` and `sbatch --wrap`, in the same run."""

from __future__ import annotations

import os
import pwd
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import scratch

REPO = Path(__file__).resolve().parents[1]


def _first_line(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.wait(timeout=120)
    assert line.startswith(b"first"), line
    return elapsed


def _sbatch(testbed, shared: Path) -> float:
    out = shared / f"sbatch-{uuid.uuid4().hex[:8]}.out"
    start = time.perf_counter()
    testbed.ssh("login", f"sbatch -o {out} --wrap 'bash {shared}/first.sh'", check=True)
    while not (out.exists() and out.read_text().startswith("first")):
        time.sleep(0.005)
        assert time.perf_counter() - start < 120
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def run(testbed, repeats: int = 5, keep_in: str | None = None) -> list[dict]:
    home = Path(pwd.getpwnam(testbed.user).pw_dir)
    shared = home / ".orchestra-bench-first"
    shared.mkdir(exist_ok=True)
    os.chown(shared, *_ids(testbed.user))
    (shared / "first.sh").write_text("echo first\n")
    ssh = testbed.ssh_argv("login")
    runaway = [sys.executable, "-m", "runaway", "exec"]
    with scratch.folder(keep_in) as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "first.sh").write_text("echo first\n")
        tools = {
            "runaway exec (reach ssh)": lambda: _first_line(
                [*runaway, "testbed-slurm", str(code / "first.sh")], REPO),
            "runaway exec (reach srun)": lambda: _first_line(
                [*runaway, "testbed-srun", str(code / "first.sh")], REPO),
            "ssh login srun -n1": lambda: _first_line(
                [*ssh, f"srun -n1 bash {shared}/first.sh"], REPO),
            "ssh login sbatch --wrap": lambda: _sbatch(testbed, shared),
        }
        times: dict[str, list[float]] = {name: [] for name in tools}
        tools["runaway exec (reach ssh)"]()  # warm: code shipped once
        for _ in range(repeats):
            for name, measure in tools.items():  # interleaved: same noise for all
                times[name].append(measure())
    peer = statistics.median(times["ssh login srun -n1"])
    return [{"benchmark": "exec start -> first output line (Slurm bed)", "tool": name,
             "value": statistics.median(values), "unit": "s",
             "ratio": statistics.median(values) / peer}
            for name, values in times.items()]


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
