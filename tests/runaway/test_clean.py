"""`runaway clean PROFILE`: what runaway left on a profile's remote folder, listed with sizes
and removed — never a run that still runs, nor the archive it runs from (local and the bed's
Slurm, real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from tests.helpers import (
    local_profile,
    slurm_profile,
    stock_profile,
    wait_started,
    write_script,
)
from tests.runaway.test_batch import runaway

HOUR_AGO = time.time() - 3600


def gently(*args, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`runaway ARGS` with a long timeout for a busy shared cluster; on timeout it is
    interrupted as a user would (Ctrl-C twice: allocations released), never SIGKILLed, so no
    request is left pending in the bed's Slurm."""
    proc = subprocess.Popen([sys.executable, "-m", "runaway", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, err = proc.communicate()
        raise AssertionError(f"runaway {args} timed out; stderr: {err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop(proc: subprocess.Popen) -> None:
    """Interrupt a driver twice (cancel: remote processes killed, allocations released)."""
    for _ in range(2):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
    proc.wait(timeout=120)


def _start(profile: Path, script: Path, name: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", name,
         "--json", "--", "x"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def _row_runs(folder: Path) -> list[str]:
    import sqlite3

    db = sqlite3.connect(folder / "journal.sqlite")
    try:
        return [r[0] for r in db.execute("SELECT run FROM executions ORDER BY seq")]
    finally:
        db.close()


def _until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_clean_local_removes_leftovers_keeps_running_run_and_its_code(tmp_path):
    profile = local_profile(tmp_path, slots=4)
    remote = tmp_path / "remote"
    quick = write_script(tmp_path / "code1", "quick.sh", "#!/usr/bin/env bash\necho $1\n")
    gate = tmp_path / "gate"
    gate.touch()
    slow = write_script(tmp_path / "code2", "slow.sh", f"""\
        #!/usr/bin/env bash
        while [ -e {gate} ]; do sleep 0.2; done
        """)
    done = runaway("batch", profile, quick, "--name", "kept", "--leave", "everything", "--",
                   "{1;2;3}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    finished = _row_runs(tmp_path / "batch/kept")
    assert sorted(p.name for p in (remote / "runs").iterdir()) == sorted(finished)
    proc = _start(profile, slow, "slow", tmp_path)
    try:
        wait_started(proc, 1)
        (running,) = _row_runs(tmp_path / "batch/slow")
        _until(lambda: (remote / "runs" / running / ".orchestra/digest").is_file())
        time.sleep(0.5)  # the run marks its archive used right after writing its digest
        for archive in (remote / "code").glob("*.tar"):  # long unused, as far as age goes
            os.utime(archive, (HOUR_AGO, HOUR_AGO))
        archives = {p.name: p.stat().st_size for p in (remote / "code").glob("*.tar")}
        assert len(archives) == 2

        dry = runaway("clean", profile, "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert "would remove 3 run folder(s) and 1 code archive(s)" in dry.stdout, dry.stdout
        assert "kept 1 run folder(s)" in dry.stdout and "and 1 archive(s)" in dry.stdout
        assert "kept: running" in dry.stdout and "kept: in use" in dry.stdout
        assert "kept #1" in dry.stdout and "slow #1" in dry.stdout  # the batch of each folder
        assert len(list((remote / "runs").iterdir())) == 4  # nothing removed

        cleaned = runaway("clean", profile, cwd=tmp_path)
        assert cleaned.returncode == 0, cleaned.stderr
        assert "removed 3 run folder(s) and 1 code archive(s)" in cleaned.stdout
        assert [p.name for p in (remote / "runs").iterdir()] == [running]
        (left,) = (remote / "code").glob("*.tar")
        assert (remote / "runs" / running / ".orchestra/digest").read_text().strip() + ".tar" \
            == left.name
    finally:
        gate.unlink()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert list((remote / "runs").iterdir()) == []  # fetched and removed by its driver
    again = runaway("clean", profile, cwd=tmp_path)  # its code is in use no more
    assert again.returncode == 0, again.stderr
    assert "removed 0 run folder(s) and 1 code archive(s)" in again.stdout, again.stdout
    assert list((remote / "code").glob("*.tar")) == []


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_clean_lists_agent_files_and_removes_only_those_of_no_running_agent(tmp_path):
    """Old agent versions and the spare folders of a killed agent go; this runaway's agent, a
    version installed a moment ago, and the spares of an agent that runs stay."""
    from liborchestra.agent import DIGEST

    profile = local_profile(tmp_path, slots=1)
    remote, host = tmp_path / "remote", os.uname().nodename
    gate = tmp_path / "gate"
    gate.touch()
    script = write_script(tmp_path / "code", "gated.sh", f"""\
        #!/usr/bin/env bash
        [ "$1" = 1 ] || while [ -e {gate} ]; do sleep 0.2; done
        """)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", "g",
         "--json", "--", "{1;2}"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_started(proc, 2)  # the first has ended: its folder becomes the agent's spare
        _until(lambda: (remote / "spare").is_dir() and any((remote / "spare").iterdir()))
        (live,) = (remote / "spare").iterdir()
        assert live.name.startswith(f"{host}-")
        dead = remote / "spare" / f"{host}-{_dead_pid()}"
        (dead / "0" / ".orchestra").mkdir(parents=True)
        (dead / "0" / "big").write_bytes(b"x" * 300_000)
        old, new = remote / "agent" / ("a" * 64), remote / "agent" / ("b" * 64)
        for version in (old, new):
            version.mkdir(parents=True)
            (version / "node_agent.py").write_text("# an older runaway's agent\n")
        os.utime(old, (HOUR_AGO, HOUR_AGO))

        dry = runaway("clean", profile, "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert "node agent files: would remove 2 folder(s)" in dry.stdout, dry.stdout
        assert "kept 3" in dry.stdout, dry.stdout
        assert "kept: the node agent of this runaway" in dry.stdout
        assert "kept: installed" in dry.stdout and "kept: its agent runs" in dry.stdout
        assert dead.is_dir() and old.is_dir()  # nothing removed

        cleaned = runaway("clean", profile, cwd=tmp_path)
        assert cleaned.returncode == 0, cleaned.stderr
        assert "node agent files: removed 2 folder(s)" in cleaned.stdout, cleaned.stdout
        assert sorted(p.name for p in (remote / "spare").iterdir()) == [live.name]
        assert sorted(p.name for p in (remote / "agent").iterdir()) == sorted([DIGEST, new.name])
    finally:
        gate.unlink()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert list((remote / "spare").iterdir()) == []  # the agent removed its own as it ended


def test_clean_of_a_profile_that_does_not_exist_is_one_error(tmp_path):
    done = runaway("clean", "no-such-profile", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "no-such-profile" in done.stderr


def test_clean_on_slurm_checks_runs_on_their_node(testbed, tmp_path):
    """The run folders are listed from the login host; whether a run still runs is asked of
    the node it runs on (the login host cannot see its processes)."""
    profile = slurm_profile(testbed, tmp_path, poll_interval="1s")
    root = yaml.safe_load(profile.read_text())["directory"].removeprefix("~/")
    tag = uuid.uuid4().hex[:8]
    quick = write_script(tmp_path / "code1", "quick.sh", "#!/usr/bin/env bash\necho $1\n")
    slow = write_script(tmp_path / "code2", "slow.sh", f"""\
        #!/usr/bin/env bash
        while [ ! -e "$HOME/gate-{tag}" ]; do sleep 0.2; done
        """)
    done = gently("batch", profile, quick, "--name", "kept", "--leave", "everything", "--",
                   "{1;2}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    proc = _start(profile, slow, "slow", tmp_path)
    try:
        wait_started(proc, 1)  # a busy bed may take minutes to grant the allocation
        (running,) = _row_runs(tmp_path / "batch/slow")
        _until(lambda: testbed.ssh("login", f"test -f ~/{root}/runs/{running}/.orchestra/digest")
               .returncode == 0)
        time.sleep(0.5)
        aged = testbed.ssh("login", f"touch -d '2 hours ago' ~/{root}/code/*.tar")
        assert aged.returncode == 0, aged.stderr
        # spare folders as agents name them: one of a pid alive on node1 (and not on login,
        # where the folders are listed), one of a pid gone on node2
        live = _pid_alive_only_on(testbed, "node1", "login")
        gone = testbed.ssh("node2", "true & p=$!; wait; echo $p").stdout.strip()
        made = testbed.ssh("login", f"mkdir -p ~/{root}/spare/node1-{live}/0 "
                                    f"~/{root}/spare/node2-{gone}/0")
        assert made.returncode == 0, made.stderr
        dry = runaway("clean", profile, "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert "would remove 2 run folder(s) and 1 code archive(s)" in dry.stdout, dry.stdout
        assert "kept: running" in dry.stdout and "kept: in use" in dry.stdout
        assert "node agent files: would remove 1 folder(s)" in dry.stdout, dry.stdout
        assert "kept: its agent runs" in dry.stdout
        cleaned = runaway("clean", profile, cwd=tmp_path)
        assert cleaned.returncode == 0, cleaned.stderr
        assert "removed 2 run folder(s) and 1 code archive(s)" in cleaned.stdout
        assert testbed.ssh("login", f"ls ~/{root}/spare").stdout.split() == [f"node1-{live}"]
        runs = testbed.ssh("login", f"ls ~/{root}/runs").stdout.split()
        assert runs == [running]
        assert len(testbed.ssh("login", f"ls ~/{root}/code").stdout.split()) == 1
    finally:
        testbed.ssh("node1", "pkill -u $USER -f 'sleep 607'")
        testbed.ssh("login", f"touch ~/gate-{tag}")
        try:
            assert proc.wait(timeout=600) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                stop(proc)
        testbed.ssh("login", f"rm -f ~/gate-{tag}")


def test_clean_on_a_hosts_profile_asks_a_host_named_by_address_for_its_spares(testbed,
                                                                              tmp_path):
    """The profile names the host 127.0.0.1; its agents name their spare folders after the
    name it gives itself. Whether their agents run is still asked of it."""
    profile = stock_profile(testbed, tmp_path)
    root = yaml.safe_load(profile.read_text())["directory"].removeprefix("~/")
    host = testbed.ssh("local", "uname -n", check=True).stdout.strip()
    assert host != "127.0.0.1"
    live = testbed.ssh("local", "setsid sleep 608 </dev/null >/dev/null 2>&1 & echo $!",
                       check=True).stdout.strip()
    try:
        gone = testbed.ssh("local", "true & p=$!; wait; echo $p", check=True).stdout.strip()
        testbed.ssh("local", f"mkdir -p ~/{root}/spare/{host}-{live}/0 "
                             f"~/{root}/spare/{host}-{gone}/0", check=True)
        dry = runaway("clean", profile, "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert "node agent files: would remove 1 folder(s)" in dry.stdout, dry.stdout
        assert "kept: its agent runs" in dry.stdout and "cannot tell" not in dry.stdout
        cleaned = runaway("clean", profile, cwd=tmp_path)
        assert cleaned.returncode == 0, cleaned.stderr
        left = testbed.ssh("local", f"ls ~/{root}/spare", check=True).stdout.split()
        assert left == [f"{host}-{live}"]
    finally:
        testbed.ssh("local", f"kill {live}; rm -rf ~/{root}")


def _pid_alive_only_on(testbed, host: str, other: str) -> str:
    """A process left running on `host` whose pid names no process on `other` (each bed host
    has its own pid namespace)."""
    for _ in range(10):
        pid = testbed.ssh(host, "setsid sleep 607 </dev/null >/dev/null 2>&1 & echo $!"
                          ).stdout.strip()
        if testbed.ssh(other, f"kill -0 {pid}").returncode != 0:
            return pid
    raise AssertionError(f"no pid of {host} free on {other}")
