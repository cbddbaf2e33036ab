"""`runaway sched` as a user runs it: a real process, real scheduler programs, real signals."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.helpers import local_profile, slurm_profile, write_profile, write_script

REPO = Path(__file__).resolve().parents[2]
RANDOM_SEARCH = REPO / "examples/schedulers/random_search.py"

# An objective of --x=X --y=Y: timestamps around a short sleep, the value as features.
OBJECTIVE = """\
#!/usr/bin/env bash
for a in "$@"; do case $a in --x=*) x=${a#--x=};; --y=*) y=${a#--y=};; esac; done
date +%s.%N > start
sleep "${SLEEP:-1}"
echo "on $(hostname)"
echo "RUNAWAY_FEATURES: $(awk -v x="$x" -v y="$y" 'BEGIN { print (x-1)^2 + (y+2)^2 }')"
date +%s.%N > end
"""

# The start of every hand-written scheduler below: one JSON object per line each way.
PRELUDE = """\
import json, os, sys
def answer(kind, **body):
    sys.stdout.write(json.dumps({kind: body}) + "\\n")
    sys.stdout.flush()
def requests():
    for line in sys.stdin:
        yield next(iter(json.loads(line).items()))
def log(kind, body):
    with open(LOG, "a") as f:
        f.write(json.dumps([kind, body]) + "\\n")
"""


def scheduler(tmp: Path, body: str) -> tuple[str, Path]:
    """A scheduler program logging every request to a file: (command, log path)."""
    log = tmp / f"sched-{uuid.uuid4().hex[:6]}.log"
    path = tmp / f"{log.stem}.py"
    path.write_text(f"LOG = {str(log)!r}\n{PRELUDE}{body}")
    return shlex.join([sys.executable, str(path)]), log


def requests(log: Path) -> list[tuple[str, dict]]:
    return [tuple(json.loads(line)) for line in log.read_text().splitlines()] \
        if log.exists() else []


def runaway(*args, cwd: Path, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runaway", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def own_lines(stderr: str) -> list[str]:
    """What runaway itself wrote (the scheduler's forwarded stderr is prefixed `sched:`)."""
    return [line for line in stderr.splitlines() if not line.startswith("sched:")]


def assert_clear_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode not in (0, None), done.stderr
    mine = own_lines(done.stderr)
    assert "Traceback" not in "\n".join(mine), done.stderr
    errors = [line for line in mine if line.startswith("runaway: error:")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def test_random_search_runs_every_point_concurrently(tmp_path):
    script = write_script(tmp_path / "code", "objective.sh", OBJECTIVE)
    results = tmp_path / "results.jsonl"
    command = shlex.join([sys.executable, str(RANDOM_SEARCH), "-n", "12", "--seed", "3",
                          "--results", str(results)])
    done = runaway("sched", local_profile(tmp_path, slots=4), script, command, "--name", "rs",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "sched/rs"
    runs = outputs(folder)
    assert len(runs) == 12
    assert all((run / "ecode").read_text().strip() == "0" for run in runs)
    spans = [(float((r / "start").read_text()), float((r / "end").read_text())) for r in runs]
    assert max_overlap(spans) >= 3, spans  # 4 slots: the waves overlap, not one at a time
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["uuid"] for r in records) == [r.name for r in runs]
    for record in records:
        x, y = (float(a.split("=")[1]) for a in record["parameters"].split())
        assert record["ecode"] == 0 and record["state"] == "completed"
        assert record["path"] == str(folder / record["uuid"])
        assert record["stdout"].startswith("on ") and "RUNAWAY_FEATURES:" in record["stdout"]
        assert abs(float(record["features"]) - ((x - 1) ** 2 + (y + 2) ** 2)) < 1e-3
        assert record["feature_values"] == [float(record["features"])]
    assert "sched: random search: best" in done.stderr
    assert len((folder / "sched.jsonl").read_text().splitlines()) == 12


def test_not_ready_is_asked_again_while_outputs_are_recorded(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", 'echo "RUNAWAY_FEATURES: $1"\n')
    command, log = scheduler(tmp_path, """\
handed = recorded = not_ready = 0
for kind, body in requests():
    log(kind, body)
    if kind == "GET_PARAMETERS_REQUEST":
        if handed >= 4:
            answer("SEARCH_FINISHED_RESPONSE")
        elif not_ready < 3 or (handed == 2 and recorded < 2):  # waits for the first results
            not_ready += 1
            answer("NOT_READY_RESPONSE")
        else:
            handed += 1
            answer("GET_PARAMETERS_RESPONSE", parameters=str(handed))
    elif kind == "RECORD_OUTPUT_REQUEST":
        recorded += 1
        answer("RECORD_OUTPUT_RESPONSE")
    elif kind == "SHUTDOWN_REQUEST":
        answer("SHUTDOWN_RESPONSE")
        break
""")
    started = time.monotonic()
    done = runaway("sched", local_profile(tmp_path), script, command, "--name", "nr",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    kinds = [kind for kind, _ in requests(log)]
    assert kinds.count("RECORD_OUTPUT_REQUEST") == 4 and kinds[-1] == "SHUTDOWN_REQUEST"
    records = [body for kind, body in requests(log) if kind == "RECORD_OUTPUT_REQUEST"]
    assert sorted(r["features"] for r in records) == ["1.0", "2.0", "3.0", "4.0"]
    assert sorted(r["parameters"] for r in records[:2]) == ["1", "2"]  # recorded first
    assert len(outputs(tmp_path / "sched/nr")) == 4


def test_slots_do_not_wait_on_slow_records(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", """\
        date +%s.%N > start; sleep 0.2
        """)
    command, log = scheduler(tmp_path, """\
import time
handed = 0
for kind, body in requests():
    log(kind, body)
    if kind == "GET_PARAMETERS_REQUEST":
        handed += 1
        answer("GET_PARAMETERS_RESPONSE", parameters=str(handed)) if handed <= 12 \\
            else answer("SEARCH_FINISHED_RESPONSE")
    elif kind == "RECORD_OUTPUT_REQUEST":
        time.sleep(0.6)  # a slow model update
        answer("RECORD_OUTPUT_RESPONSE")
    else:
        answer("SHUTDOWN_RESPONSE")
        break
""")
    done = runaway("sched", local_profile(tmp_path), script, command, "--name", "slow",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    starts = sorted(float((r / "start").read_text()) for r in outputs(tmp_path / "sched/slow"))
    assert len(starts) == 12
    # The 12 records take 7.2 s in all; served in arrival order, the last start would wait for
    # 8 of them (4.8 s). Parameters are asked first (measured: 0.9 s; 1.5 s when records and
    # requests merely alternate), so starts do not wait on records.
    assert starts[-1] - starts[0] < 2.5, starts
    kinds = [kind for kind, _ in requests(log)]
    assert kinds.count("RECORD_OUTPUT_REQUEST") == 12 and kinds[-1] == "SHUTDOWN_REQUEST"


def test_scheduler_crash_drains_running_executions(tmp_path):
    script = write_script(tmp_path / "code", "slow.sh", """\
        sleep 2; echo done > result.txt
        """)
    command, log = scheduler(tmp_path, """\
handed = 0
for kind, body in requests():
    log(kind, body)
    if kind == "GET_PARAMETERS_REQUEST":
        if handed == 4:
            raise RuntimeError("boom")
        handed += 1
        answer("GET_PARAMETERS_RESPONSE", parameters=f"--point={handed}")
    else:
        answer("RECORD_OUTPUT_RESPONSE")
""")
    done = runaway("sched", local_profile(tmp_path), script, command, "--name", "crash",
                   cwd=tmp_path)
    assert_clear_error(done, "scheduler", "exited with status 1")
    assert "sched: RuntimeError: boom" in done.stderr  # its stderr, shown
    runs = outputs(tmp_path / "sched/crash")
    assert len(runs) == 4  # the running ones finished and were fetched
    assert all((run / "ecode").read_text().strip() == "0" for run in runs)
    assert all((run / "result.txt").read_text() == "done\n" for run in runs)
    assert "completed 4" in done.stderr


def test_protocol_errors_are_one_clear_error(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "true\n")
    cases = {
        'print("not json", flush=True)': ("invalid JSON", "not json"),
        'answer("ERROR_RESPONSE", message="no space left")': ("ERROR_RESPONSE",
                                                              "no space left"),
        'answer("PARAMETERS_PLEASE")': ("unknown message", "PARAMETERS_PLEASE"),
        'answer("GET_PARAMETERS_RESPONSE", parameters=3)': ("parameters",),
        'answer("GET_PARAMETERS_RESPONSE", parameters="a \'b")': ("cannot be split",),
        'answer("RECORD_OUTPUT_RESPONSE")': ("RECORD_OUTPUT_RESPONSE",
                                             "GET_PARAMETERS_REQUEST"),
        "sys.exit(0)": ("exited with status 0",),
    }
    for reply, words in cases.items():
        command, log = scheduler(tmp_path, f"for kind, body in requests():\n    {reply}\n")
        done = runaway("sched", local_profile(tmp_path), script, command, cwd=tmp_path,
                       timeout=60)
        assert_clear_error(done, *words)
    assert not any(p.is_dir() for p in (tmp_path / "sched").glob("*/*"))


def test_parameters_arrive_verbatim(tmp_path):
    tag = uuid.uuid4().hex[:8]
    argv = ["it's", 'a "b"', f"$(touch /tmp/pwned-{tag})", f"x; touch /tmp/pwned-{tag}",
            "`id`", "l1\nl2", ""]
    script = write_script(tmp_path / "code", "argv.sh", """\
        printf '%s\\0' "$@" > argv.bin
        echo '[1.5, 2]' > features
        """)
    command, log = scheduler(tmp_path, f"""\
points = [{shlex.join(argv)!r}, {argv!r}]
for kind, body in requests():
    log(kind, body)
    if kind == "GET_PARAMETERS_REQUEST":
        if points:
            answer("GET_PARAMETERS_RESPONSE", parameters=points.pop(0))
        else:
            answer("SEARCH_FINISHED_RESPONSE")
    elif kind == "RECORD_OUTPUT_REQUEST":
        answer("RECORD_OUTPUT_RESPONSE")
    else:
        answer("SHUTDOWN_RESPONSE")
        break
""")
    done = runaway("sched", local_profile(tmp_path), script, command, "--name", "q",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = outputs(tmp_path / "sched/q")
    assert len(runs) == 2
    for run in runs:
        assert [a.decode() for a in (run / "argv.bin").read_bytes().split(b"\0")[:-1]] == argv
    records = [body for kind, body in requests(log) if kind == "RECORD_OUTPUT_REQUEST"]
    assert sorted(map(str, (r["parameters"] for r in records))) == \
        sorted([shlex.join(argv), str(argv)])  # echoed back as given
    assert all(r["features"] == "1.5 2.0" and r["feature_values"] == [1.5, 2.0]
               for r in records)
    assert not Path(f"/tmp/pwned-{tag}").exists()


def test_lost_execution_is_requeued_with_the_same_parameters(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    # The first attempt of each point kills its wrapper: no exit code, so the engine says lost.
    # (A profile with setup lines runs each script under a wrapper of its own; without them,
    # the script's parent is the node keeper, shared by every run on the node.)
    script = write_script(tmp_path / "code", "flaky.sh", f"""\
        mark={marks}/$1
        if [ ! -e "$mark" ]; then touch "$mark"; kill -9 $PPID; sleep 5; fi
        echo "RUNAWAY_FEATURES: $1"
        """)
    command, log = scheduler(tmp_path, """\
handed = 0
for kind, body in requests():
    log(kind, body)
    if kind == "GET_PARAMETERS_REQUEST":
        handed += 1
        answer("GET_PARAMETERS_RESPONSE", parameters=str(handed)) if handed <= 3 \\
            else answer("SEARCH_FINISHED_RESPONSE")
    elif kind == "RECORD_OUTPUT_REQUEST":
        answer("RECORD_OUTPUT_RESPONSE")
    else:
        answer("SHUTDOWN_RESPONSE")
        break
""")
    done = runaway("sched", local_profile(tmp_path, setup=["true"]), script, command,
                   "--name", "lost", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("requeued with the same parameters") == 3
    records = [body for kind, body in requests(log) if kind == "RECORD_OUTPUT_REQUEST"]
    assert sorted((r["parameters"], r["features"], r["ecode"]) for r in records) == \
        [("1", "1.0", 0), ("2", "2.0", 0), ("3", "3.0", 0)]


def start(tmp_path: Path, script: Path, command: str, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runaway", "sched", str(local_profile(tmp_path)), str(script),
         command, "--name", name], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_first_interrupt_drains_and_shuts_the_scheduler_down(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    script = write_script(tmp_path / "code", "slow.sh", f"""\
        touch {marks}/$RUNAWAY_UUID.start; sleep 2; touch {marks}/$RUNAWAY_UUID.end
        """)
    results = tmp_path / "results.jsonl"
    command = shlex.join([sys.executable, str(RANDOM_SEARCH), "-n", "100", "--results",
                          str(results)])
    proc = start(tmp_path, script, command, "drain")
    try:
        wait_for(lambda: len(list(marks.glob("*.start"))) >= 4)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    started = {p.name.split(".")[0] for p in marks.glob("*.start")}
    assert started == {p.name.split(".")[0] for p in marks.glob("*.end")}
    assert 4 <= len(started) <= 5  # the slots' executions (and one that got a slot then)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    completed = {r["uuid"] for r in records if r["state"] == "completed"}
    assert completed == started == {p.name for p in outputs(tmp_path / "sched/drain")}
    cancelled = [r for r in records if r["state"] != "completed"]  # the one asked ahead
    assert all(r["state"] == "cancelled" and r["ecode"] is None for r in cancelled)
    assert len(cancelled) <= 1 and len(records) == len(started) + len(cancelled)
    assert "sched: random search: no successful point" in stderr  # got SHUTDOWN_REQUEST
    assert "Traceback" not in stderr


def test_second_interrupt_cancels_now(tmp_path):
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    script = write_script(tmp_path / "code", "slow.sh", f"""\
        bash -c 'exec -a {marker} sleep 300'
        """)
    pid_file = tmp_path / "sched.pid"
    command, log = scheduler(tmp_path, f"""\
open({str(pid_file)!r}, "w").write(str(os.getpid()))
for kind, body in requests():
    answer("GET_PARAMETERS_RESPONSE", parameters="x")
""")
    proc = start(tmp_path, script, command, "cancel")
    try:
        ours = lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True,  # noqa: E731
                                      text=True).stdout.split()
        wait_for(lambda: len(ours()) >= 4)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert ours() == []
    wait_for(lambda: not Path(f"/proc/{pid_file.read_text()}").exists(), timeout=5)
    assert "Traceback" not in stderr


def test_random_search_on_slurm(testbed, tmp_path):
    script = write_script(tmp_path / "code", "objective.sh", OBJECTIVE)
    results = tmp_path / "results.jsonl"
    command = shlex.join([sys.executable, str(RANDOM_SEARCH), "-n", "8", "--seed", "5",
                          "--results", str(results)])
    done = runaway("sched", slurm_profile(testbed, tmp_path), script, command, "--name", "s",
                   cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = outputs(tmp_path / "sched/s")
    assert len(runs) == 8
    assert all((run / "ecode").read_text().strip() == "0" for run in runs)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 8 and all(r["ecode"] == 0 and r["features"] for r in records)
    hosts = {r["stdout"].split()[1] for r in records}
    assert hosts <= set(testbed.nodes), hosts
    spans = [(float((r / "start").read_text()), float((r / "end").read_text())) for r in runs]
    assert max_overlap(spans) >= 2, spans
    squeue = testbed.ssh("login", "squeue -h -u $USER -o '%j'", check=True).stdout
    assert "orchestra-" not in squeue


def test_killed_and_resumed_the_program_gets_the_history_and_nothing_runs_twice(tmp_path):
    log = tmp_path / "ran.log"
    script = write_script(tmp_path / "code", "point.sh", f"""\
        sleep 1.5
        echo "${{RUNAWAY_UUID%%.*}}" >> {log}
        echo "RUNAWAY_FEATURES: 1"
        """)
    results = tmp_path / "results.jsonl"
    command = shlex.join([sys.executable, str(RANDOM_SEARCH), "-n", "8",
                          "--results", str(results)])
    proc = start(tmp_path, script, command, "again")
    try:
        wait_for(lambda: results.exists() and len(results.read_text().splitlines()) >= 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    first_life = [json.loads(line) for line in results.read_text().splitlines()]
    db = sqlite3.connect(tmp_path / "sched/again/journal.sqlite")
    history = {u for (u,) in db.execute("SELECT uuid FROM executions WHERE state = 'completed'")}
    (decided,) = db.execute("SELECT COUNT(*) FROM executions").fetchone()
    db.close()
    assert {r["uuid"] for r in first_life} <= history
    done = runaway("sched", "--resume", "--name", "again", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ran = log.read_text().splitlines()
    assert len(ran) == len(set(ran)), ran  # no point ran twice (each line: its uuid)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    replayed = records[len(first_life):len(first_life) + len(history)]
    assert {r["uuid"] for r in replayed} == history  # fed first, before any new point
    final = {r["uuid"]: r for r in records}  # each point's last record
    assert all(r["state"] == "completed" for r in final.values())
    # the points in flight at the kill are run (or recovered) by the driver, and the program
    # learns of them only when they are recorded: it may hand out that many more than 8
    assert 8 <= len(final) <= 8 + (decided - len(history)) and set(final) == set(ran)


def test_sched_over_two_clusters(tmp_path):
    """`runaway sched a,b ...` takes the PROFILE list of `runaway batch`: one program, points
    run on both clusters, each recorded once with its cluster in the node."""
    script = write_script(tmp_path / "code", "objective.sh", OBJECTIVE)
    other = write_profile(tmp_path / "other", "loc2", {
        "scheduler": {"kind": "local"}, "slots": 2, "directory": str(tmp_path / "remote2")})
    command = shlex.join([sys.executable, str(RANDOM_SEARCH), "-n", "8", "--seed", "3"])
    done = runaway("sched", f"{local_profile(tmp_path, slots=2)},{other}", script, command,
                   "--name", "two", cwd=tmp_path, env={**os.environ, "SLEEP": "0.5"})
    assert done.returncode == 0, done.stderr
    db = sqlite3.connect(tmp_path / "sched/two/journal.sqlite")
    try:
        rows = db.execute("SELECT state, node FROM executions").fetchall()
    finally:
        db.close()
    assert [state for state, _ in rows] == ["completed"] * 8
    assert {node.split("/")[0] for _, node in rows} == {"loc", "loc2"}, rows
