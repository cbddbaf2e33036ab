"""`parasearch` as a user runs it: real processes, a Branin script, the local profile."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import local_profile, write_profile, write_script

BRANIN_OPTIMUM = 0.397887
# Branin of --x and --y; logs "<uuid> start" and "<uuid> <value>" to $LOG (outside the run
# folder), so a test sees how often each trial ran and what it printed.
BRANIN = """\
#!/usr/bin/env bash
for a in "$@"; do case $a in --x=*) x=${a#--x=};; --y=*) y=${a#--y=};; esac; done
echo "${RUNAWAY_UUID%%.*} start" >> "$LOG"
sleep "${SLEEP:-0}"
v=$(python3 -c "import math,sys; x,y=map(float,sys.argv[1:]); \\
print(repr((y-5.1/(4*math.pi**2)*x*x+5/math.pi*x-6)**2+10*(1-1/(8*math.pi))*math.cos(x)+10))" \\
"$x" "$y")
echo "${RUNAWAY_UUID%%.*} $v" >> "$LOG"
echo "RUNAWAY_FEATURES: $v"
"""
PRIORS = ("--", "--x~uniform(-5, 10)", "--y~uniform(0, 15)")


def parasearch(*args, cwd: Path, env: dict | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "parasearch", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def trial_rows(folder: Path) -> list[tuple]:
    db = sqlite3.connect(folder / "search.sqlite")
    try:
        return db.execute("SELECT run, state, value, params, message FROM trials "
                          "ORDER BY number").fetchall()
    finally:
        db.close()


def logged(log: Path) -> tuple[dict[str, int], dict[str, float]]:
    starts: dict[str, int] = {}
    values: dict[str, float] = {}
    for line in log.read_text().splitlines():
        uuid, what = line.split()
        if what == "start":
            starts[uuid] = starts.get(uuid, 0) + 1
        else:
            values[uuid] = float(what)
    return starts, values


@pytest.fixture
def branin(tmp_path):
    return write_script(tmp_path / "code", "branin.sh", BRANIN), tmp_path / "log.txt"


@pytest.mark.parametrize("seed", [1, 2])
def test_tpe_with_8_in_flight_reaches_sampler_quality_and_records_each_trial_once(
        tmp_path, branin, seed):
    script, log = branin
    done = parasearch("--algo", "tpe", "--n", 100, "--parallel", 8, "--seed", seed, "--name",
                      "t", local_profile(tmp_path, slots=8), script, *PRIORS, cwd=tmp_path,
                      env={"LOG": str(log)})
    assert done.returncode == 0, done.stderr
    rows = trial_rows(tmp_path / "search/t")
    assert [r[1] for r in rows] == ["completed"] * 100  # never more trials than needed
    starts, values = logged(log)
    assert set(starts.values()) == {1} and len(starts) == 100
    assert {r[0]: r[2] for r in rows} == values  # the objective the script printed
    best = min(values.values())
    # Optuna's TPE with 8 always pending: median regret 0.024 after 100 (random: 0.49)
    assert best - BRANIN_OPTIMUM < 0.1, best
    out = parasearch("best", "t", "--json", cwd=tmp_path)
    assert json.loads(out.stdout)["objective"] == best


def test_killed_and_resumed_ends_with_exactly_n_and_recovers_what_finished(tmp_path, branin):
    script, log = branin
    proc = subprocess.Popen(
        [sys.executable, "-m", "parasearch", "--algo", "random", "--n", "12", "--name", "k",
         "--json", str(local_profile(tmp_path, slots=3)), str(script), *PRIORS],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LOG": str(log), "SLEEP": "1.5"})
    try:
        deadline = time.monotonic() + 60
        while not log.exists() or sum(logged(log)[0].values()) < 5:
            assert time.monotonic() < deadline, "trials did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    running_at_kill = set(logged(log)[0]) - set(logged(log)[1])
    assert running_at_kill  # some were running: they finish while the driver is dead
    time.sleep(2)
    done = parasearch("--resume", "--name", "k", cwd=tmp_path, env={"LOG": str(log)})
    assert done.returncode == 0, done.stderr
    rows = trial_rows(tmp_path / "search/k")
    assert [r[1] for r in rows].count("completed") == 12
    starts, values = logged(log)
    assert set(starts.values()) == {1}, starts  # none ran twice: recovered, not re-run
    assert {r[0]: r[2] for r in rows if r[1] == "completed"} == values


def test_max_broken_stops_with_the_failures_and_a_missing_objective_fails(tmp_path):
    script = write_script(tmp_path / "code", "bad.sh", """\
        for a in "$@"; do case $a in --x=*) x=${a#--x=};; esac; done
        if python3 -c "import sys; sys.exit(float(sys.argv[1]) < 0)" "$x"; then
            echo "boom at $x" >&2; exit 3
        fi
        echo "no objective printed"
        """)
    done = parasearch("--n", 50, "--max-broken", 4, "--name", "b", local_profile(tmp_path),
                      script, "--", "--x~uniform(-1, 1)", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "trials broken (--max-broken 4)" in done.stderr
    rows = trial_rows(tmp_path / "search/b")
    failed = [r for r in rows if r[1] == "failed"]
    assert len(failed) >= 4 and len(rows) < 50
    reasons = {r[4] for r in failed}
    assert any(reason.startswith("no objective") for reason in reasons) or "exit 3" in reasons
    status = parasearch("status", "b", cwd=tmp_path)
    assert "failed trial" in status.stdout
    assert "boom at" in status.stdout or "no objective" in status.stdout


def test_results_json_and_report_and_export(tmp_path):
    script = write_script(tmp_path / "code", "r.sh", """\
        for a in "$@"; do case $a in --lr=*) lr=${a#--lr=};; --opt=*) opt=${a#--opt=};; esac; done
        printf '{"objective": %s, "metrics": {"acc": 0.5}}' "$lr" > results.json
        """)
    done = parasearch("--n", 6, "--maximize", "--name", "r", local_profile(tmp_path), script,
                      "--", "--lr~loguniform(1e-4, 1)", "--opt~choices(['sgd', 'adam'])",
                      "verbatim; $(echo no)", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    export = json.loads(parasearch("export", "r", "--format", "json", cwd=tmp_path).stdout)
    assert len(export) == 6 and all(t["metrics"] == {"acc": 0.5} for t in export)
    assert all(t["objective"] == pytest.approx(t["params"]["lr"]) for t in export)
    best = json.loads(parasearch("best", "r", "--json", cwd=tmp_path).stdout)
    assert best["objective"] == max(t["objective"] for t in export)  # --maximize
    csv = parasearch("export", "r", cwd=tmp_path).stdout.splitlines()
    assert csv[0].startswith("trial,uuid,state,objective,lr,opt,acc") and len(csv) == 7
    report = parasearch("report", "r", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "search/r/report.html").read_text()
    assert "parallel coordinates" in page and "best so far" in page and "<script" in page
    assert not re.search(r"<script[^>]*src=", page)  # self-contained: plotly.js inline


@pytest.mark.parametrize("args, words", [
    (["--x~uniform(1, 0)"], ["'x'"]),
    (["--x~nosuch(0, 1)"], ["'x'"]),
    (["--x~uniform(0, 1)", "--x~uniform(0, 2)"], ["'x'", "twice"]),
    (["plain"], ["no dimension"]),
    (["--x~fidelity(1, 10)", "--y~uniform(0, 1)"], ["'x'", "fidelity"]),
])
def test_bad_priors_are_one_clear_error_and_write_nothing(tmp_path, args, words):
    script = write_script(tmp_path / "code", "s.sh", "true\n")
    done = parasearch("--algo", "tpe", local_profile(tmp_path), script, "--", *args,
                      cwd=tmp_path)
    _clear_error(done, *words)
    assert not (tmp_path / "search").exists()


def test_other_bad_input_is_one_clear_error(tmp_path):
    script = write_script(tmp_path / "code", "s.sh", 'echo "RUNAWAY_FEATURES: 1"\n')
    profile = local_profile(tmp_path)
    _clear_error(parasearch("--algo", "nope", profile, script, "--", "--x~uniform(0, 1)",
                            cwd=tmp_path), "--algo", "tpe")
    _clear_error(parasearch("--algo", "cmaes", profile, script, "--",
                            "--c~choices(['a', 'b'])", cwd=tmp_path), "cmaes", "categorical")
    _clear_error(parasearch("--resume", "--name", "ghost", cwd=tmp_path), "ghost")
    assert not (tmp_path / "search").exists()
    ok = parasearch("--n", 2, "--name", "s", profile, script, "--", "--x~uniform(0, 1)",
                    cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    _clear_error(parasearch("--resume", "--name", "s", profile, script, "--",
                            "--x~uniform(0, 2)", "--extra", cwd=tmp_path), "differ")


def _clear_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_asha_promotions_rerun_the_same_parameters_at_a_higher_fidelity(tmp_path):
    script = write_script(tmp_path / "code", "curve.sh", """\
        for a in "$@"; do case $a in --x=*) x=${a#--x=};; --epochs=*) e=${a#--epochs=};; esac
        done
        echo "RUNAWAY_FEATURES: $(python3 -c "import sys; print(float(sys.argv[1]) + 1 / \\
        float(sys.argv[2]))" "$x" "$e")"
        """)
    done = parasearch("--algo", "asha", "--n", 24, "--name", "a", local_profile(tmp_path),
                      script, "--", "--x~uniform(0, 1)", "--epochs~fidelity(1, 9, 3)",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = json.loads(parasearch("export", "a", "--format", "json", cwd=tmp_path).stdout)
    assert len(trials) == 24 and all(t["state"] == "completed" for t in trials)
    by_rung: dict[int, list[float]] = {}
    for t in trials:
        by_rung.setdefault(t["params"]["epochs"], []).append(t["params"]["x"])
        assert t["objective"] == pytest.approx(t["params"]["x"] + 1 / t["params"]["epochs"])
    assert set(by_rung) >= {1, 3} and len(by_rung[1]) > len(by_rung[3])
    assert set(by_rung[3]) <= set(by_rung[1])  # promoted: the same x, re-run at 3 epochs
    page = parasearch("report", "a", cwd=tmp_path)
    assert page.returncode == 0
    assert "objective by rung" in (tmp_path / "search/a/report.html").read_text()


def test_one_search_over_two_clusters_uses_both(tmp_path, branin):
    """`parasearch ... a,b SCRIPT`: one search, trials placed on whichever cluster has a free
    slot, each recorded once with the cluster in its node."""
    script, log = branin
    other = write_profile(tmp_path / "other", "loc2", {
        "scheduler": {"kind": "local"}, "slots": 2, "directory": str(tmp_path / "remote2")})
    done = parasearch("--algo", "random", "--n", 24, "--name", "two",
                      f"{local_profile(tmp_path, slots=2)},{other}", script, *PRIORS,
                      cwd=tmp_path, env={"LOG": str(log), "SLEEP": "0.3"})
    assert done.returncode == 0, done.stderr
    assert [r[1] for r in trial_rows(tmp_path / "search/two")] == ["completed"] * 24
    starts, _ = logged(log)
    assert set(starts.values()) == {1} and len(starts) == 24
    exported = parasearch("export", "two", "--format", "json", cwd=tmp_path)
    nodes = {t["node"].split("/")[0] for t in json.loads(exported.stdout)}
    assert nodes == {"loc", "loc2"}, nodes
