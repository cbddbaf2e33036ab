"""orchestra on a 100,000-execution journal: how long a page of executions takes to answer.

The journal is made by liborchestra's own calls (`Journal.create` + `journal.add` of 100,000
rows), then its states, nodes and times are set in one SQL update, as if a driver had run it.
A real `orchestra serve` answers; each page is requested REPEATS times (after one warm-up) and
the median is quoted, with the server's RSS before and after all requests.

    .venv/bin/python bench/orchestra_bench.py [ROWS] [REPEATS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from liborchestra.journal import Journal  # noqa: E402
from orchestra.discovery import entry_id  # noqa: E402
from tests.orchestra.web import serving  # noqa: E402


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def build(folder: Path, rows: int) -> Path:
    journal = Journal.create(folder / "journal.sqlite", {"name": folder.name})
    journal.add((str(uuid.uuid4()), (f"--lr={i % 97}", f"--seed={i}"), f"--lr={i % 97} "
                 f"--seed={i}") for i in range(rows))
    now = time.time()
    with journal.db:
        journal.db.execute(
            "UPDATE executions SET state = CASE WHEN seq % 50 = 0 THEN 'failed' "
            "WHEN seq > ? THEN 'queued' ELSE 'completed' END, attempts = 1, "
            "node = 'node' || (seq % 3 + 1), slot = 'slot' || (seq % 8), "
            "ecode = CASE WHEN seq % 50 = 0 THEN 1 ELSE 0 END, "
            "started = ? + seq * 0.01, finished = ? + seq * 0.01 + (seq % 7)", (rows - 2000,
                                                                                now, now))
    journal.close()
    return folder / "journal.sqlite"


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = build(Path(tmp) / "batch" / "big", rows)
        print(f"journal of {rows} executions built in {time.perf_counter() - started:.1f} s")
        bid = entry_id(path.resolve())
        pages = {
            "overview": "/",
            "batch, page 1": f"/batch/{bid}",
            "batch, page 1000": f"/batch/{bid}?page=1000",
            "batch, last page": f"/batch/{bid}?page={(rows + 49) // 50}",
            "filter state=failed": f"/batch/{bid}?state=failed",
            "filter parameter --seed=4242": f"/batch/{bid}?q=--seed%3D4242",
            "sort by duration, desc": f"/batch/{bid}?sort=duration&desc=1",
            "sort by node, page 500": f"/batch/{bid}?sort=node&page=500",
            "execution #77777": f"/batch/{bid}/{min(77777, rows)}",
        }
        with serving(Path(tmp)) as server:
            server.get("/")
            before = _rss_mb(server.proc.pid)
            print(f"{'page':32s} {'median':>9s} {'max':>9s}")
            for name, url in pages.items():
                assert server.get(url).status == 200, url  # warm-up, and it must answer
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    answer = server.get(url)
                    times.append(time.perf_counter() - t)
                    assert answer.status == 200
                print(f"{name:32s} {1000 * statistics.median(times):7.1f}ms "
                      f"{1000 * max(times):7.1f}ms")
            after = _rss_mb(server.proc.pid)
            print(f"server RSS {before:.0f} MB before the requests, {after:.0f} MB after "
                  f"{repeats * len(pages)} of them")


if __name__ == "__main__":
    main()
