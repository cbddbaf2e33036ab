"""`runaway exec` and `runaway check` as a user runs them: a real process, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import (
    ARGV_SCRIPT,
    jump_profile,
    local_profile,
    stock_profile,
    write_profile,
    write_script,
)

REPO = Path(__file__).resolve().parents[2]


def runaway(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runaway", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(params=["local", "stock", "jump"])
def profile(request, tmp_path):
    if request.param == "local":
        return local_profile(tmp_path)
    testbed = request.getfixturevalue("testbed")
    make = stock_profile if request.param == "stock" else jump_profile
    return make(testbed, tmp_path)


def test_readme_quickstart_on_builtin_local(tmp_path):
    done = runaway("exec", "local", REPO / "examples/hello.sh", "--", "world", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello world from ")
    (folder,) = (tmp_path / "runs").iterdir()
    assert (folder / "greeting.txt").read_text() == "world\n"
    assert (folder / "ecode").read_text().strip() == "0"


def test_exec_streams_fetches_and_mirrors_exit_code(profile, tmp_path):
    script = write_script(tmp_path / "code", "job.sh", """\
        echo "out $1"; echo "err $1" >&2; echo result > made.txt; exit 7
        """)
    done = runaway("exec", profile, script, "-o", tmp_path / "res", "--", "it's $(x)",
                   cwd=tmp_path)
    assert done.returncode == 7, done.stderr
    assert done.stdout == "out it's $(x)\n"
    assert "err it's $(x)" in done.stderr
    assert (tmp_path / "res/made.txt").read_text() == "result\n"
    assert runaway("exec", profile, script, "--no-ecode", cwd=tmp_path).returncode == 0


def test_arguments_verbatim_through_the_command_line(profile, tmp_path):
    tag = uuid.uuid4().hex[:8]
    args = ["it's", 'a "b"', f"$(touch /tmp/pwned-{tag})", f"x; touch /tmp/pwned-{tag}", "l1\nl2"]
    script = write_script(tmp_path / "code", "argv.sh", ARGV_SCRIPT)
    done = runaway("exec", profile, script, "-o", tmp_path / "res", "--", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    received = (tmp_path / "res/argv.bin").read_bytes().split(b"\0")[:-1]
    assert [r.decode() for r in received] == args
    assert not Path(f"/tmp/pwned-{tag}").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_kills_the_remote_process(testbed, tmp_path, sig):
    """Ctrl-C (or SIGTERM) on `runaway exec`: no process of ours is left on the node."""
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    script = write_script(tmp_path / "code", "slow.sh", f"""\
        echo started
        bash -c 'exec -a {marker} sleep 300'
        """)
    profile = jump_profile(testbed, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "runaway", "exec", str(profile), str(script)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "started\n"
        deadline = time.monotonic() + 20
        while not [p for p in testbed.procs("node1") if marker in p]:
            assert time.monotonic() < deadline, "the script never showed on node1"
            time.sleep(0.1)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [p for p in testbed.procs("node1") if marker in p] == []
    assert "Traceback" not in proc.stderr.read()


def _one_clear_line(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("runaway: error:"), done.stderr
    text = " ".join(line.strip() for line in lines)
    for word in words:
        assert word in text, text


def test_bad_input_gets_one_clear_error(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "true\n")
    _one_clear_line(runaway("exec", "no-such-profile", script, cwd=tmp_path),
                    "no-such-profile", "no profile of that name")
    _one_clear_line(runaway("exec", "local", tmp_path / "missing.sh", cwd=tmp_path),
                    "missing.sh", "no such script")
    bad = write_profile(tmp_path, "bad", {"scheduler": {"kind": "local"}, "slotz": 2})
    _one_clear_line(runaway("exec", bad, script, cwd=tmp_path), "bad.yml", "slotz",
                    "unknown field")
    broken = tmp_path / "broken.yml"
    broken.write_text("scheduler: {kind: local\n")
    _one_clear_line(runaway("exec", broken, script, cwd=tmp_path), "broken.yml", "invalid YAML")
    assert not (tmp_path / "runs").exists()


def test_connection_problems_get_one_clear_error(testbed, tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "true\n")
    other = tmp_path / "otherkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    cases = [
        ({"identity": [str(other)]}, "authentication failed"),
        ({"known_hosts": str(empty)}, "host key unknown"),
        ({"port": 1}, "unreachable"),
    ]
    for ssh, words in cases:
        profile = stock_profile(testbed, tmp_path / words.replace(" ", "-"), **ssh)
        if "port" in ssh:
            text = profile.read_text().replace(f"port: {testbed.local_port}", "port: 1")
            profile.write_text(text)
        _one_clear_line(runaway("exec", profile, script, cwd=tmp_path), words)
    assert not (tmp_path / "runs").exists()


def test_check_reports_each_step(profile, tmp_path):
    done = runaway("check", profile, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    steps = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("ok")]
    assert "profile" in steps and "directory" in steps and "slots" in steps
    if profile.stem != "loc":
        assert {"reachable", "host", "auth"} <= set(steps)


def test_check_fails_on_changed_host_key(testbed, tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (tmp_path / "k.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{testbed.local_port} {pub[0]} {pub[1]}\n")
    done = runaway("check", stock_profile(testbed, tmp_path, known_hosts=str(known)),
                   cwd=tmp_path)
    assert done.returncode == 1
    assert any(line.startswith("FAIL host key") and "CHANGED" in line
               for line in done.stderr.splitlines()), done.stderr
    assert os.path.exists(known)
