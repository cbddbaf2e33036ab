"""expegit run vs runaway batch: N executions of `true` on the local profile, wall time of
each, side by side in one run; then `expegit status` and `expegit export` on the campaign.

    .venv/bin/python bench/expegit_bench.py [N]      (default 1000)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.org",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@example.org"}


def sh(*argv: str, cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tmp = Path(tempfile.mkdtemp(prefix="expegit-bench-"))
    code = tmp / "code"
    code.mkdir()
    (code / "t.sh").write_text("#!/bin/sh\ntrue\n")
    (code / "t.sh").chmod(0o755)
    sh("git", "init", "-q", "-b", "main", cwd=code)
    sh("git", "add", ".", cwd=code)
    sh("git", "commit", "-q", "-m", "t", cwd=code)
    profile = tmp / "loc.yml"
    profile.write_text(f"name: loc\nscheduler: {{kind: local}}\nslots: 8\n"
                       f"directory: {tmp / 'remote'}\n")
    py = sys.executable
    sh(py, "-m", "expegit", "init", "camp", "--code", str(code), cwd=tmp)
    sweep = ("-x", str(n))
    runaway = str(Path(py).parent / "runaway")
    batch = sh(runaway, "batch", str(profile), str(code / "t.sh"), "--json",
               "-o", str(tmp / "batch"), *sweep, cwd=tmp)
    camp = tmp / "camp"
    run = sh(py, "-m", "expegit", "run", str(profile), "t.sh", "--json", *sweep, cwd=camp)
    commits = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=camp,
                             capture_output=True, text=True).stdout.strip()
    status = sh(py, "-m", "expegit", "status", cwd=camp)
    export = sh(py, "-m", "expegit", "export", "-o", str(tmp / "x.csv"), cwd=camp)
    print(f"{n} executions of `true` on local (8 slots)")
    print(f"  runaway batch  {batch:7.2f} s")
    print(f"  expegit run    {run:7.2f} s   ratio {run / batch:.2f}x   ({commits} commits)")
    print(f"  expegit status {status:7.2f} s   export {export:.2f} s  ({n} records)")
    print(f"  folder: {tmp}")


if __name__ == "__main__":
    main()
