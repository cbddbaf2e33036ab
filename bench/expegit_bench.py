"""expegit benchmarks, with the peers side by side in one run:

1. `expegit run` vs `runaway batch`: N executions of `true` on local (target <= 1.3x the
   batch's wall time: git costs little).
2. `expegit status` and `expegit export` on a campaign of 10,000 records (target <= 1 s
   each): the records made by expegit's own record-writing code (`Record`, `record.write`,
   `Campaign.commit`, one commit), then the CLI's wall time, warm (the catalog's cache of
   parsed records is current) and cold (no cache: the first read after a clone).
3. `datalad run` of N one-line runs, one after another as DataLad users must, vs `expegit
   run` of the same N on local (target >= 20x the records/s), interleaved repeats.
4. Two runs at once in one folder: two loops of `datalad run` in one dataset (its users'
   known failure, datalad/datalad#4606) vs two `expegit run` in one campaign.

    .venv/bin/python -m bench.expegit_bench [--quick] [--only true,status,datalad,parallel]

DataLad from PyPI in /work/bench-venv (`/work/bench-venv/bin/pip install datalad`) with
Debian's git-annex. Wall time is the whole command, interpreter start-up included; every
figure is a median over the repeats.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATALAD = Path(os.environ.get("BENCH_DATALAD", "/work/bench-venv/bin/datalad"))
PY = sys.executable
IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.org",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@example.org"}
ENV = {**os.environ, **IDENTITY}
ONE_LINE = '#!/bin/sh\necho "$1" > out.txt\n'  # the one-line run of both tools


def sh(*argv: str, cwd: Path, check: bool = True) -> tuple[float, float, int, str]:
    """Run a command: (wall s, CPU s of it and its children, exit code, stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if check and done.returncode != 0:
        sys.exit(f"bench: {' '.join(argv[:4])} failed ({done.returncode}): "
                 f"{done.stderr[-2000:]}")
    return wall, cpu, done.returncode, done.stderr


def expegit(*args: str, cwd: Path, check: bool = True) -> tuple[float, float, int, str]:
    return sh(PY, "-m", "expegit", *args, cwd=cwd, check=check)


def code_repo(folder: Path, scripts: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, body in scripts.items():
        (folder / name).write_text(body)
        (folder / name).chmod(0o755)
    sh("git", "init", "-q", "-b", "main", cwd=folder)
    sh("git", "add", ".", cwd=folder)
    sh("git", "commit", "-q", "-m", "code", cwd=folder)
    return folder


def profile(tmp: Path, slots: int) -> Path:
    path = tmp / "loc.yml"
    path.write_text(f"name: loc\nscheduler: {{kind: local}}\nslots: {slots}\n"
                    f"directory: {tmp / 'remote'}\n")
    return path


def campaign(tmp: Path, name: str, code: Path) -> Path:
    expegit("init", name, "--code", str(code), "--no-annex", cwd=tmp)
    return tmp / name


def records_in(camp: Path) -> int:
    return sum(1 for _ in (camp / "runs").glob("*/record.json"))


def med(values: list[float]) -> float:
    return statistics.median(values)


# -- 1. expegit run vs runaway batch ----------------------------------------------------------

def bench_true(tmp: Path, n: int, repeats: int, slots: int) -> list[dict]:
    code = code_repo(tmp / "code-true", {"t.sh": "#!/bin/sh\ntrue\n"})
    prof = profile(tmp, slots)
    runaway = str(Path(PY).parent / "runaway")
    batch, run = [], []
    for rep in range(repeats):  # interleaved: the load of a shared machine falls on both
        batch.append(sh(runaway, "batch", str(prof), str(code / "t.sh"), "--json", "-o",
                        str(tmp / f"batch{rep}"), "-x", str(n), cwd=tmp)[:2])
        camp = campaign(tmp, f"camp-true{rep}", code)
        run.append(expegit("run", str(prof), "t.sh", "--json", "-x", str(n), cwd=camp)[:2])
        assert records_in(camp) == n
    b, r = med([w for w, _ in batch]), med([w for w, _ in run])
    what = f"{n} x `true` on local x{slots}"
    return [
        {"benchmark": what, "tool": "runaway batch", "value": b, "unit": "s", "ratio": 1.0,
         "cpu_ms": med([c for _, c in batch]) / n * 1000},
        {"benchmark": what, "tool": "expegit run (target <= 1.3x)", "value": r, "unit": "s",
         "ratio": r / b, "cpu_ms": med([c for _, c in run]) / n * 1000},
    ]


# -- 2. status and export on 10,000 records ---------------------------------------------------

def make_records(camp: Path, n: int, seed: int = 1) -> None:
    """`n` records of a sweep, written by expegit's own record code, committed at once: 1 in
    100 failed (with a stderr line, for status's failures), parameters and metrics as a run
    of train.sh would record them."""
    from expegit import record as records
    from expegit.campaign import Campaign

    c = Campaign.open(camp)
    commit = c.code_repo().head.commit.hexsha
    rng, t0 = random.Random(seed), time.time() - 86400
    for i in range(n):
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        failed, lr = i % 100 == 7, round(rng.random(), 4)
        argv = (f"--lr={lr}", f"--seed={i}")
        folder = c.runs / rid
        folder.mkdir()
        (folder / "stdout").write_text(f"training lr={lr}\n")
        (folder / "stderr").write_text("diverged: loss is nan\n" if failed else "")
        records.write(folder, records.Record(
            id=rid, commit=commit, script="t.sh", arguments=argv,
            parameters=records.parse_parameters(argv), profile="loc",
            state="failed" if failed else "completed", exit_code=3 if failed else 0,
            node="localhost", slot=str(i % 8), allocation="local", submitted=t0 + i - 0.1,
            started=t0 + i, ended=t0 + i + 1.5, duration=1.5, features=(lr, 1.0),
            metrics={"loss": 2 * lr}, run="bench", by="bench@host", tool="bench"))
    c.commit(["runs"], f"bench: {n} records")


def bench_status(tmp: Path, n: int, repeats: int) -> list[dict]:
    code = code_repo(tmp / "code-status", {"t.sh": "#!/bin/sh\ntrue\n"})
    camp = campaign(tmp, "camp-status", code)
    start = time.perf_counter()
    make_records(camp, n)
    made = time.perf_counter() - start
    print(f"  {n} records written and committed in {made:.1f} s", file=sys.stderr)
    cache = camp / ".git" / "expegit" / "records.cache"
    commands = {"expegit status": ("status",),
                "expegit export (csv)": ("export", "-o", str(tmp / "x.csv")),
                "expegit export --format json": ("export", "--format", "json",
                                                 "-o", str(tmp / "x.json"))}
    out = []
    for tool, args in commands.items():
        for cold in (False, True):
            runs = []
            expegit(*args, cwd=camp)  # the cache is current (warm) from here
            for _ in range(repeats):
                if cold:
                    cache.unlink(missing_ok=True)
                runs.append(expegit(*args, cwd=camp)[:2])
            wall = med([w for w, _ in runs])
            out.append({"benchmark": f"{n:,} records, {'cold: no cache' if cold else 'warm'}",
                        "tool": f"{tool} (target <= 1 s)", "value": wall, "unit": "s",
                        "ratio": wall / 1.0, "cpu_ms": med([c for _, c in runs]) * 1000})
    rows = (tmp / "x.csv").read_text().count("\n") - 1
    assert rows == n, f"export wrote {rows} rows, not {n}"
    return out


# -- 3. datalad run vs expegit run ------------------------------------------------------------

def datalad_dataset(tmp: Path, name: str) -> Path:
    sh(str(DATALAD), "create", name, cwd=tmp)
    ds = tmp / name
    (ds / "one.sh").write_text(ONE_LINE)
    (ds / "one.sh").chmod(0o755)
    sh(str(DATALAD), "save", "-m", "the script", cwd=ds)
    return ds


def datalad_runs(ds: Path, ks: range, check: bool = True) -> tuple[int, list[str]]:
    """`datalad run` of each k, one after another; (runs that succeeded, their errors)."""
    ok, errors = 0, []
    for k in ks:
        done = subprocess.run([str(DATALAD), "run", "-m", f"run {k}",
                               f"mkdir out{k} && cd out{k} && ../one.sh {k}"], cwd=ds,
                              env=ENV, capture_output=True, text=True)
        if done.returncode == 0:
            ok += 1
            continue
        if check:
            sys.exit(f"bench: datalad run failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
        said = [line.strip() for line in (done.stdout + done.stderr).splitlines()
                if any(w in line.lower() for w in ("error", "impossible", "lock", "fail"))]
        errors.append(said[0][:160] if said else f"exit {done.returncode}")
    return ok, errors


def datalad_records(ds: Path) -> int:
    log = subprocess.run(["git", "log", "--format=%s%n%b"], cwd=ds, capture_output=True,
                         text=True).stdout
    return log.count("=== Do not change lines below ===")  # one run record per commit


def bench_datalad(tmp: Path, n: int, repeats: int, slots: int) -> list[dict]:
    if not DATALAD.exists():
        sys.exit(f"bench: {DATALAD} is missing: /work/bench-venv/bin/pip install datalad")
    code = code_repo(tmp / "code-one", {"one.sh": ONE_LINE})
    prof = profile(tmp, slots)
    ks = ",".join(str(k) for k in range(n))
    ours, theirs = [], []
    for rep in range(repeats):
        ds = datalad_dataset(tmp, f"ds{rep}")
        start = time.perf_counter()
        datalad_runs(ds, range(n))
        theirs.append(n / (time.perf_counter() - start))
        assert datalad_records(ds) == n, datalad_records(ds)
        camp = campaign(tmp, f"camp-one{rep}", code)
        wall, _, _, _ = expegit("run", str(prof), "one.sh", "--json", "--param", f"k={ks}",
                                cwd=camp)
        ours.append(n / wall)
        assert records_in(camp) == n
        print(f"  repeat {rep + 1}/{repeats}: datalad run {theirs[-1]:.2f} records/s, "
              f"expegit run {ours[-1]:.1f} records/s", file=sys.stderr, flush=True)
    d, e = med(theirs), med(ours)
    what = f"{n} one-line runs recorded (datalad: one after another)"
    return [{"benchmark": what, "tool": "datalad run", "value": d, "unit": "records/s",
             "ratio": 1.0},
            {"benchmark": what, "tool": "expegit run (target >= 20x)", "value": e,
             "unit": "records/s", "ratio": e / d}]


# -- 4. two runs at once in one folder --------------------------------------------------------

def bench_parallel(tmp: Path, n: int, slots: int) -> list[dict]:
    ds = datalad_dataset(tmp, "ds-parallel")
    procs = [subprocess.Popen(
        [PY, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from bench.expegit_bench "
         "import datalad_runs; from pathlib import Path; ok, errors = datalad_runs("
         "Path(sys.argv[2]), range(int(sys.argv[3]), int(sys.argv[4])), check=False); "
         "print(ok); print(*sorted(set(errors))[:3], sep='\\n')",
         str(Path(__file__).resolve().parents[1]), str(ds), str(i * n), str((i + 1) * n)],
        env=ENV, stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate()[0].splitlines() for p in procs]
    ok = sum(int(o[0]) for o in outs)
    errors = sorted({e for o in outs for e in o[1:] if e})
    kept = datalad_records(ds)
    code = code_repo(tmp / "code-par", {"one.sh": ONE_LINE})
    camp = campaign(tmp, "camp-par", code)
    prof = profile(tmp, slots)
    runs = [subprocess.Popen(
        [PY, "-m", "expegit", "run", str(prof), "one.sh", "--json", "--name", f"r{i}",
         "--param", "k=" + ",".join(str(k) for k in range(i * n, (i + 1) * n))],
        cwd=camp, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    failed = [p.communicate()[1] for p in runs if p.wait() != 0]
    clean = subprocess.run(["git", "status", "--porcelain"], cwd=camp, capture_output=True,
                           text=True).stdout == ""
    ours = records_in(camp)
    print(f"  two datalad run loops at once: {ok} of {2 * n} runs succeeded, {kept} run "
          f"records in git; errors: {' | '.join(errors) or 'none'}", file=sys.stderr)
    print(f"  two expegit run at once: {ours} of {2 * n} records, {len(failed)} failed, "
          f"git status {'clean' if clean else 'NOT clean'}", file=sys.stderr)
    what = f"two runs of {n} at once in one folder: records kept of {2 * n}"
    return [{"benchmark": what, "tool": f"datalad run x2 ({ok} of {2 * n} exited 0)",
             "value": kept, "unit": "records", "ratio": 1.0},
            {"benchmark": what, "tool": "expegit run x2", "value": ours, "unit": "records",
             "ratio": ours / max(1, kept)}]


PARTS = ("true", "status", "datalad", "parallel")


def run(quick: bool = False, only: tuple[str, ...] = PARTS) -> list[dict]:
    """For bench.run: the rows of the umbrella table."""
    slots = 4
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="expegit-bench-"))
    try:
        if "true" in only:
            rows += bench_true(tmp, 200 if quick else 1000, 1 if quick else 3, slots)
        if "status" in only:
            rows += bench_status(tmp, 10_000, 5)
        if "datalad" in only:
            rows += bench_datalad(tmp, 30 if quick else 100, 1 if quick else 3, slots)
        if "parallel" in only:
            rows += bench_parallel(tmp, 5 if quick else 10, slots)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer executions and repeats")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts (default: {','.join(PARTS)})")
    options = parser.parse_args()
    only = tuple(p for p in options.only.split(",") if p)
    unknown = set(only) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    load = os.getloadavg()[0]
    rows = run(options.quick, only)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="expegit (medians; ratio: the row / the peer's row, or / the target)",
                  caption=f"1-min load average {load:.2f} -> {os.getloadavg()[0]:.2f} on "
                          f"{os.cpu_count()} cores shared with other work")
    for column in ("benchmark", "tool", "value", "unit", "ratio", "CPU ms (per exec)"):
        table.add_column(column)
    for r in rows:
        cpu = r.get("cpu_ms")
        table.add_row(r["benchmark"], r["tool"], f"{r['value']:.3g}", r["unit"],
                      f"{r['ratio']:.2f}", "" if cpu is None else f"{cpu:.1f}")
    Console(width=180).print(table)


if __name__ == "__main__":
    main()
