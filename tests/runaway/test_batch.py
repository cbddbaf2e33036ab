"""`runaway batch` and friends, as a user runs them (real processes, real signals)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import local_profile, wait_started, write_script

# Appends one line per finished execution to a log outside the run folder, so a test can
# check that every execution completed exactly once.
LOG_SCRIPT = """\
#!/usr/bin/env bash
sleep "${SLEEP:-0}"
echo "$*" >> "$LOG"
echo "args: $*"
"""


def runaway(*args, cwd: Path, env: dict | None = None, timeout: float = 180):
    return subprocess.run([sys.executable, "-m", "runaway", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def journal(folder: Path) -> list[tuple]:
    db = sqlite3.connect(folder / "journal.sqlite")
    try:
        return db.execute("SELECT seq, label, state, attempts, ecode FROM executions "
                          "ORDER BY seq").fetchall()
    finally:
        db.close()


def stdouts(folder: Path) -> list[str]:
    db = sqlite3.connect(folder / "journal.sqlite")
    uuids = [r[0] for r in db.execute("SELECT uuid FROM executions ORDER BY seq")]
    db.close()
    return [(folder / u / "stdout").read_text() for u in uuids]


@pytest.fixture
def setup(tmp_path):
    log = tmp_path / "log.txt"
    script = write_script(tmp_path / "code", "job.sh", LOG_SCRIPT)
    profile = local_profile(tmp_path, slots=4)
    return tmp_path, script, profile, log


@pytest.mark.parametrize("template", [
    "--lr= + {0.1;0.01} + ' --bs=' + {32;64}",
    "--lr={0.1;0.01} --bs={32;64}",
])
def test_template_syntaxes(setup, template):
    tmp, script, profile, log = setup
    done = runaway("batch", profile, script, "--name", "t", "--", template, cwd=tmp,
                   env={"LOG": str(log)})
    assert done.returncode == 0, done.stderr
    assert stdouts(tmp / "batch/t") == [f"args: --lr={lr} --bs={bs}\n"
                                        for lr in ("0.1", "0.01") for bs in ("32", "64")]


def test_arguments_file_in_file_order_with_repeats(setup):
    tmp, script, profile, log = setup
    (tmp / "args.txt").write_text("# a comment\nthird 'with space'\n\nfirst\nsecond $(x)\n")
    done = runaway("batch", profile, script, "--name", "a", "-A", tmp / "args.txt", "-x", "2",
                   cwd=tmp, env={"LOG": str(log)})
    assert done.returncode == 0, done.stderr
    assert [r[1] for r in journal(tmp / "batch/a")] == [
        "third 'with space'", "third 'with space'", "first", "first", "second $(x)",
        "second $(x)"]
    assert stdouts(tmp / "batch/a")[0] == "args: third with space\n"
    assert stdouts(tmp / "batch/a")[4] == "args: second $(x)\n"


def test_param_grid(setup):
    tmp, script, profile, log = setup
    done = runaway("batch", profile, script, "--name", "g", "--param", "lr=1,2",
                   "--param", "act=relu,tanh,'x'", cwd=tmp, env={"LOG": str(log)})
    assert done.returncode == 0, done.stderr
    assert len(journal(tmp / "batch/g")) == 6
    assert stdouts(tmp / "batch/g")[2] == "args: --lr=1 --act='x'\n"


def test_config_directory_with_in_out_data(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("a.json", "b.json"):
        (configs / name).write_text(f'{{"name": "{name}"}}')
    script = write_script(tmp_path / "code", "train.sh", """\
        #!/usr/bin/env bash
        # train.sh --config IN --out OUT --data DATA
        mkdir -p "$4"; cp "$2" "$4/used.json"; echo "$6" > "$4/data.txt"
        """)
    done = runaway("batch", local_profile(tmp_path), script, "--name", "c", "--configs",
                   configs, "--data", "/data/set", "--", "--config %IN --out %OUT --data %DATA",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "batch/c"
    rows = journal(folder)
    assert [r[2] for r in rows] == ["completed", "completed"]
    db = sqlite3.connect(folder / "journal.sqlite")
    uuids = [r[0] for r in db.execute("SELECT uuid FROM executions ORDER BY seq")]
    assert (folder / uuids[0] / "out/a/used.json").read_text() == '{"name": "a.json"}'
    assert (folder / uuids[1] / "out/b/data.txt").read_text() == "/data/set\n"


def test_retries_and_failures_in_status(setup):
    tmp, _, profile, log = setup
    flaky = write_script(tmp / "code2", "flaky.sh", f"""\
        #!/usr/bin/env bash
        marker={tmp}/tried-$1
        if [ "$1" = always ]; then echo "always broken" >&2; exit 4; fi
        if [ ! -e "$marker" ]; then touch "$marker"; echo "first try fails" >&2; exit 5; fi
        echo fine
        """)
    done = runaway("batch", profile, flaky, "--name", "r", "--retries", "1", "--",
                   "{once;always}", cwd=tmp)
    assert done.returncode == 1
    rows = journal(tmp / "batch/r")
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("once", "completed", 2, 0), ("always", "failed", 2, 4)]
    status = runaway("status", "r", cwd=tmp)
    assert status.returncode == 0
    assert "completed 1" in status.stdout and "failed 1" in status.stdout
    assert "always broken" in status.stdout


def test_canary_stops_before_the_rest(setup):
    tmp, _, profile, _ = setup
    bad = write_script(tmp / "code2", "bad.sh", "echo 'missing input' >&2; exit 2\n")
    done = runaway("batch", profile, bad, "--name", "k", "--canary", "2", "--",
                   "{1;2;3;4;5;6}", cwd=tmp)
    assert done.returncode == 2
    assert "canary" in done.stderr and "missing input" in done.stderr
    states = [r[2] for r in journal(tmp / "batch/k")]
    assert states[:2] == ["failed", "failed"] and set(states[2:]) == {"queued"}


def test_post_command_runs_in_each_output_folder(setup):
    tmp, script, profile, log = setup
    done = runaway("batch", profile, script, "--name", "p", "-p",
                   'echo "$RUNAWAY_ECODE:$RUNAWAY_STDOUT" > post.txt', "--", "{x;y}",
                   cwd=tmp, env={"LOG": str(log)})
    assert done.returncode == 0, done.stderr
    folder = tmp / "batch/p"
    posts = sorted(p.read_text() for p in folder.glob("*/post.txt"))
    assert posts == ["0:args: x\n\n", "0:args: y\n\n"]


@pytest.mark.parametrize("args, words", [
    (["--", "--lr={0.1;0.01"], "column"),
    (["--", "{}"], "empty"),
    (["--configs", "/nonexistent-dir"], "no such directory"),
    (["--param", "lr"], "NAME=VALUE"),
    (["-A", "/nonexistent-file"], "no such arguments file"),
    (["--", *["y" * 50_000] * 3], "execution 1 (yyy"),  # RUNAWAY_ARGUMENTS past the kernel's
])
def test_bad_sweeps_are_one_clear_error(setup, args, words):
    tmp, script, profile, _ = setup
    done = runaway("batch", profile, script, "--name", "bad", *args, cwd=tmp)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert words in done.stderr and done.stderr.startswith("runaway: error:")
    assert not (tmp / "batch/bad").exists()  # nothing half-written


def test_arguments_too_long_for_the_kernel_are_refused_before_anything_runs(setup):
    """RUNAWAY_ARGUMENTS is one environment string: Linux refuses one over 128 KiB on every
    node, so the batch is refused at once, naming the execution; one just under it runs."""
    tmp, script, profile, _ = setup
    lines = tmp / "args.txt"
    lines.write_text("short\n" + "z" * 140_000 + "\n")
    done = runaway("batch", profile, script, "--name", "long", "-A", str(lines), cwd=tmp)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("runaway: error:") and "execution 2 (zzz" in done.stderr
    assert "140,000 bytes" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp / "batch/long").exists()
    lines.write_text("z" * 130_000 + "\n")
    done = runaway("batch", profile, script, "--name", "fits", "-A", str(lines), cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]


def test_unknown_batch_name_is_one_clear_error(tmp_path):
    for command in ("status", "retry", "cancel"):
        done = runaway(command, "nope", cwd=tmp_path)
        assert done.returncode == 2 and "no batch named 'nope'" in done.stderr
        assert "Traceback" not in done.stderr
    done = runaway("batch", "local", "x.sh", "--resume", "--name", "nope", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def _start(tmp: Path, profile: Path, script: Path, name: str, n: int, env: dict):
    return subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", name,
         "--json", "--", "{" + ";".join(str(i) for i in range(n)) + "}"],
        cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env})


def test_sigkill_then_resume_completes_each_execution_exactly_once(setup):
    tmp, script, profile, log = setup
    env = {"LOG": str(log), "SLEEP": "1.5"}
    proc = _start(tmp, profile, script, "k9", 30, env)  # 4 slots: a window of 16 in flight
    wait_started(proc, 6)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    states = [r[2] for r in journal(tmp / "batch/k9")]
    assert "running" in states and "queued" in states
    time.sleep(2)  # the detached runs finish while no driver is alive
    done = runaway("batch", profile, script, "--name", "k9", "--resume", cwd=tmp, env=env)
    assert done.returncode == 0, done.stderr
    assert [r[2] for r in journal(tmp / "batch/k9")] == ["completed"] * 30
    lines = log.read_text().split()
    assert sorted(lines, key=int) == [str(i) for i in range(30)]  # each exactly once
    assert all(out.startswith("args: ") for out in stdouts(tmp / "batch/k9"))


def test_sigint_once_drains_twice_cancels(setup):
    tmp, script, profile, log = setup
    env = {"LOG": str(log), "SLEEP": "2"}
    proc = _start(tmp, profile, script, "d", 12, env)
    wait_started(proc, 4)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    rows = journal(tmp / "batch/d")
    done = [r for r in rows if r[2] == "completed"]
    assert len(done) == 4 and all(r[2] == "queued" for r in rows if r not in done)
    assert len(log.read_text().split()) == 4  # drained: the 4 running ones finished

    marker = f"job-{uuid.uuid4().hex[:6]}"
    slow = write_script(tmp / "code3", "slow.sh", f"exec -a {marker} sleep 60\n")
    proc = _start(tmp, profile, slow, "c", 8, {})
    wait_started(proc, 4)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert [r[2] for r in journal(tmp / "batch/c")] == ["queued"] * 8  # all run again
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    assert left == ""


def test_batch_folder_inside_the_code_folder_is_not_shipped(setup):
    """Running from the code folder (the usual case) must not ship the journal and outputs."""
    tmp, script, profile, log = setup
    code = script.parent
    for name in ("one", "two"):
        done = runaway("batch", profile, script, "--name", name, "--", "x", cwd=code,
                       env={"LOG": str(log)})
        assert done.returncode == 0, done.stderr
    archives = list((tmp / "remote/code").glob("*.tar"))
    assert len(archives) == 1  # the second batch found the same code: batch/ was not in it
    import tarfile

    with tarfile.open(archives[0]) as tar:
        assert not [n for n in tar.getnames() if n.startswith("batch/")]
