"""orchestra at 100,000 executions: how long pages take on a big journal (`pages`), and the
server's memory and page times while a 100,000-execution batch of `true` runs (`running`).

pages: the journal is made by liborchestra's own calls (`Journal.create` + `journal.add` of 100,000
rows), then its states, nodes and times are set in one SQL update, as if a driver had run it.
A real `orchestra serve` answers; each page is requested REPEATS times (after one warm-up) and
the median is quoted, with the server's RSS before and after all requests.

    .venv/bin/python bench/orchestra_bench.py [pages] [ROWS] [REPEATS]

running: a real `orchestra serve` starts the batch itself (the launch form's POST; with
`--by runaway`, a `runaway batch` process beside it instead) and, while it runs, is asked for
the overview, the batch's first and last pages and an execution page in turn, with three live
streams (SSE) open; its RSS is sampled every second. The default is a 60 s slice of the batch;
`--full` lets it run to the end.

    .venv/bin/python bench/orchestra_bench.py running [--seconds 60] [--full] [--by runaway]

campaign: a campaign made by `expegit init` with ROWS records written by expegit's own
`record.write`; the first page's time (its index filled) and each page's median.

    .venv/bin/python bench/orchestra_bench.py campaign [ROWS] [REPEATS]
"""

from __future__ import annotations

import argparse
import http.client
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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
    argv = sys.argv[1:]
    if argv and argv[0] == "running":
        running(argv[1:])
        return
    if argv and argv[0] == "campaign":
        campaign(argv[1:])
        return
    if argv and argv[0] == "pages":
        argv = argv[1:]
    rows = int(argv[0]) if argv else 100_000
    repeats = int(argv[1]) if len(argv) > 1 else 20
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


# -- a big campaign ------------------------------------------------------------------------

def campaign(argv: list[str]) -> None:
    """A campaign made by `expegit init`, holding ROWS records written by expegit's own
    `record.write` (as `expegit run` leaves them); the first page (the index filled from the
    records) and then each page REPEATS times."""
    import random
    import subprocess as sp

    from expegit.record import Record, write

    rows = int(argv[0]) if argv else 100_000
    repeats = int(argv[1]) if len(argv) > 1 else 10
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        code = root / "code"
        code.mkdir()
        env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
               "GIT_COMMITTER_EMAIL": "b@b", "PATH": "/usr/bin:/bin"}
        (code / "train.sh").write_text("#!/bin/sh\ntrue\n")
        for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "c"]):
            sp.run(["git", *args], cwd=code, check=True, env=env)
        folder = root / "served" / "study"
        sp.run([sys.executable, "-m", "expegit", "init", str(folder), "--code", str(code),
                "--no-annex"], check=True, capture_output=True)
        commit = sp.run(["git", "rev-parse", "HEAD"], cwd=code, check=True, text=True,
                        capture_output=True).stdout.strip()
        started = time.perf_counter()
        rng, now = random.Random(1), time.time()
        for i in range(rows):
            rid = str(uuid.UUID(int=rng.getrandbits(128)))
            state = "failed" if i % 50 == 0 else "completed"
            write(folder / "runs" / rid, Record(
                id=rid, commit=commit, script="train.sh", profile="local",
                arguments=(f"--lr={i % 97}", f"--seed={i}"), label=f"--lr={i % 97} --seed={i}",
                parameters={"lr": i % 97, "seed": i}, state=state,
                exit_code=1 if state == "failed" else 0, node=f"node{i % 3}", slot=str(i % 8),
                started=now + i * 0.01, ended=now + i * 0.01 + i % 7, duration=i % 7))
        print(f"campaign of {rows} records written in {time.perf_counter() - started:.1f} s")
        cid = entry_id((folder / "expegit.yml").resolve())
        one = next(iter((folder / "runs").glob("*-*"))).name
        pages = {"campaign, page 1": f"/campaign/{cid}",
                 "campaign, last page": f"/campaign/{cid}?page={(rows + 49) // 50}",
                 "filter state=failed": f"/campaign/{cid}?state=failed",
                 "filter parameter --seed=4242": f"/campaign/{cid}?q=--seed%3D4242",
                 "sort by duration, desc": f"/campaign/{cid}?sort=duration&desc=1",
                 "an execution": f"/campaign/{cid}/{one}", "overview": "/"}
        with serving(root / "served") as server:
            before = _rss_mb(server.proc.pid)
            t = time.perf_counter()
            assert server.get(f"/campaign/{cid}").status == 200
            print(f"first page (the index filled from {rows} records): "
                  f"{time.perf_counter() - t:.1f} s; server RSS {before:.0f} -> "
                  f"{_rss_mb(server.proc.pid):.0f} MB")
            print(f"{'page':32s} {'median':>9s} {'max':>9s}")
            for name, url in pages.items():
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    assert server.get(url).status == 200, url
                    times.append(time.perf_counter() - t)
                print(f"{name:32s} {1000 * statistics.median(times):7.1f}ms "
                      f"{1000 * max(times):7.1f}ms")
            print(f"server RSS after: {_rss_mb(server.proc.pid):.0f} MB")


# -- while a batch runs --------------------------------------------------------------------

PAGES = ("overview", "batch, page 1", "batch, last page", "execution #1")


def _streams(server, urls: list[str], stop: threading.Event) -> list[list[float]]:
    """Live streams held open like a browser's EventSource, read until `stop`; for each, the
    times its messages arrived."""
    arrivals: list[list[float]] = [[] for _ in urls]

    def read(url: str, times: list[float]) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        try:
            conn.request("GET", url)
            answer = conn.getresponse()
            while not stop.is_set():
                line = answer.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    times.append(time.perf_counter())
        except OSError:
            return
        finally:
            conn.close()

    for url, times in zip(urls, arrivals, strict=True):
        threading.Thread(target=read, args=(url, times), daemon=True).start()
    return arrivals


def _counts(journal: Path) -> dict[str, int]:
    j = Journal.open(journal)
    try:
        return j.counts()
    finally:
        j.close()


def running(argv: list[str]) -> None:
    options = argparse.ArgumentParser(prog="orchestra_bench.py running")
    options.add_argument("--rows", type=int, default=100_000)
    options.add_argument("--seconds", type=float, default=60.0)
    options.add_argument("--full", action="store_true", help="run the batch to its end")
    options.add_argument("--slots", type=int, default=2)
    options.add_argument("--by", choices=("server", "runaway"), default="server",
                         help="who drives the batch (default: the server, from its form)")
    args = options.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "code" / "true.sh"
        script.parent.mkdir()
        script.write_text("#!/bin/sh\ntrue\n")
        script.chmod(0o755)
        profile = root / "scale.yml"
        profile.write_text(f"name: scale\nscheduler: {{kind: local}}\nslots: {args.slots}\n"
                           f"directory: {root / 'remote'}\n")
        served = root / "served"
        served.mkdir()
        journal = served / "batch" / "big" / "journal.sqlite"
        driver = None
        with serving(served) as server:
            t0 = time.perf_counter()
            if args.by == "server":
                answer = server.post("/launch", {
                    "csrf": server.csrf(), "kind": "batch", "profile": str(profile),
                    "script": str(script), "name": "big", "template": "--k=1",
                    "repeats": str(args.rows)})
                assert answer.status == 303, answer.body[:500]
            else:
                driver = subprocess.Popen(
                    [sys.executable, "-m", "runaway", "batch", str(profile), str(script),
                     "--name", "big", "-o", str(journal.parent), "--repeats", str(args.rows),
                     "--json", "--", "--k=1"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
            try:
                _measure(server, journal, args, t0)
            finally:
                if driver is not None and driver.poll() is None:
                    driver.send_signal(signal.SIGINT)
                    driver.send_signal(signal.SIGINT)  # twice: cancel now
                    try:
                        driver.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        driver.kill()
                        driver.wait()


def _measure(server, journal: Path, args: argparse.Namespace, t0: float) -> None:
    while not journal.is_file() or not _counts(journal).get("completed"):
        assert time.perf_counter() - t0 < 300, "the batch did not start in 300 s"
        time.sleep(0.5)
    bid = entry_id(journal.resolve())
    print(f"batch of {args.rows} `true` on local ({args.slots} slots), driven by "
          f"{args.by}; first execution done {time.perf_counter() - t0:.1f} s after launch")
    last = (args.rows + 49) // 50
    urls = dict(zip(PAGES, ("/", f"/batch/{bid}", f"/batch/{bid}?page={last}",
                            f"/batch/{bid}/1"), strict=True))
    stop = threading.Event()
    streams = _streams(server, ["/events", f"/batch/{bid}/events", f"/batch/{bid}/events"],
                       stop)
    start, done0 = time.perf_counter(), _counts(journal).get("completed", 0)
    rss: list[tuple[float, float]] = []
    times: dict[str, list[tuple[float, float]]] = {p: [] for p in PAGES}
    try:
        while True:
            now = time.perf_counter() - start
            counts = _counts(journal)
            finished = not counts.get("queued") and not counts.get("running") \
                and not counts.get("submitted")
            if (not args.full and now >= args.seconds) or (args.full and finished):
                break
            for name, url in urls.items():
                t = time.perf_counter()
                assert server.get(url).status == 200, url
                times[name].append((now, time.perf_counter() - t))
            rss.append((now, _rss_mb(server.proc.pid)))
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - start - now)))
    finally:
        stop.set()
    elapsed = time.perf_counter() - start
    done = _counts(journal).get("completed", 0) - done0
    print(f"{elapsed:.0f} s measured: {done} executions completed ({done / elapsed:.0f}/s), "
          f"{len(rss)} RSS samples")
    for url, arrived in zip(("overview", "batch", "batch"), streams, strict=True):
        gaps = [b - a for a, b in zip(arrived, arrived[1:], strict=False)]
        print(f"live stream ({url}): {len(arrived)} messages, gap median "
              f"{statistics.median(gaps) if gaps else float('nan'):.2f} s, max "
              f"{max(gaps, default=float('nan')):.2f} s")
    third = max(1, len(rss) // 3)
    head, mid, tail = (statistics.median(v for _, v in part) for part in
                       (rss[:third], rss[third:2 * third] or rss[:third], rss[-third:]))
    print(f"server RSS (MB, medians of each third): start {head:.0f}, mid {mid:.0f}, "
          f"end {tail:.0f}; max {max(v for _, v in rss):.0f}; end/start {tail / head:.2f}")
    if len(rss) >= 3 and done:
        slope = statistics.linear_regression([t for t, _ in rss], [v for _, v in rss]).slope
        print(f"RSS trend (least squares): {60 * slope:+.2f} MB/min, "
              f"{1000 * slope * elapsed / done:+.3f} MB per 1,000 executions")
    print(f"{'page':20s} {'median 1st half':>16s} {'median 2nd half':>16s} {'ratio':>6s}")
    for name, samples in times.items():
        first = [d for t, d in samples if t < elapsed / 2] or [d for _, d in samples]
        second = [d for t, d in samples if t >= elapsed / 2] or first
        a, b = statistics.median(first), statistics.median(second)
        print(f"{name:20s} {1000 * a:14.1f}ms {1000 * b:14.1f}ms {b / a:6.2f}")


if __name__ == "__main__":
    main()
