"""The node keeper: the parent of the scripts an agent starts (one process per execution, no
wrapper), writing their exit codes itself; a profile with setup lines keeps the wrapper. Its
death loses exit codes, so its runs are reattached to and run again, once each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import local_profile, write_script
from tests.runaway.test_batch_faults import rows


def _run(tmp: Path, script: Path, name: str, *args: str, **profile) -> list[Path]:
    done = subprocess.run([sys.executable, "-m", "runaway", "batch",
                           str(local_profile(tmp, slots=2, **profile)), str(script),
                           "--name", name, "--", *args], cwd=tmp, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return sorted((f for f in (tmp / "batch" / name).iterdir() if f.is_dir()),
                  key=lambda f: (f / "stdout").read_text())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _keepers(tmp_path) -> list[int]:
    """The keepers of this test's agents: named runaway-keeper, forked from an agent installed
    under tmp_path (so with its command line) or started from there."""
    found = subprocess.run(["pgrep", "-x", "runaway-keeper"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()
            if f"{tmp_path}/remote/agent/" in _cmdline(int(pid))]


def test_the_script_is_the_keepers_child_with_the_wrappers_environment(tmp_path):
    """The same variables (and working folder) as under the wrapper, which a profile with
    setup lines still uses."""
    script = write_script(tmp_path / "code", "job.sh", """\
        #!/usr/bin/env bash
        cat /proc/$PPID/comm
        echo "pwd $PWD $(pwd) $*"
        env | grep -E '^(RUNAWAY_[A-Z_]*|TOKEN|PWD)=' |
          sed "s|$PWD|RUN|g; s|$RUNAWAY_UUID|UUID|g" | sort
        """)
    seen = {}
    for name, setup in (("direct", []), ("wrapped", ["true"])):
        [folder] = _run(tmp_path, script, name, "a b", "c", env={"TOKEN": "t0"}, setup=setup)
        parent, pwd, *env = (folder / "stdout").read_text().splitlines()
        run = pwd.split()[1]
        assert pwd == f"pwd {run} {run} a b c" and "/remote/runs/" in run, pwd
        seen[name] = (parent, [line.replace(name, "NAME") for line in env])
    assert seen["direct"][0] == "runaway-keeper"  # no wrapper between keeper and script
    assert seen["wrapped"][0] == "bash"
    assert seen["direct"][1] == seen["wrapped"][1]
    assert "RUNAWAY_SCRIPT_PATH=RUN/job.sh" in seen["direct"][1]
    assert "TOKEN=t0" in seen["direct"][1] and "PWD=RUN" in seen["direct"][1]


def test_a_profile_with_setup_lines_runs_its_scripts_under_the_wrapper(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", """\
        #!/usr/bin/env bash
        tr '\\0' ' ' < /proc/$PPID/cmdline; echo; echo "$SET_BY_SETUP"
        """)
    [folder] = _run(tmp_path, script, "setup", "x", setup=["export SET_BY_SETUP=yes"])
    parent, value = (folder / "stdout").read_text().splitlines()
    assert parent.startswith("bash ") and value == "yes"


def test_exit_codes_as_bash_gives_them(tmp_path):
    """A signal's 128 + n, a missing interpreter's 127 (and why, in stderr), and a script
    with no #! line run by bash."""
    code = tmp_path / "code"
    write_script(code, "nobang.sh", "echo bash ran me\n")
    write_script(code, "missing.sh", "#!/nonexistent/interpreter\necho never\n")
    script = write_script(code, "job.sh", """\
        #!/usr/bin/env bash
        case $1 in
          term) echo term; kill -TERM $$ ;;
          *) echo "$1"; exit 7 ;;
        esac
        """)
    term, seven = _run(tmp_path, script, "codes", "{term;x}")
    assert (term / "ecode").read_text().strip() == "143"
    assert (seven / "ecode").read_text().strip() == "7"
    [nobang] = _run(tmp_path, code / "nobang.sh", "nobang", "1")
    assert (nobang / "stdout").read_text() == "bash ran me\n"
    assert (nobang / "ecode").read_text().strip() == "0"
    [missing] = _run(tmp_path, code / "missing.sh", "missing", "1")
    assert (missing / "ecode").read_text().strip() == "127"
    assert "No such file" in (missing / "stderr").read_text()


def test_a_killed_keeper_has_its_runs_reattached_to_and_run_again_once(tmp_path):
    log = tmp_path / "log"
    script = write_script(tmp_path / "code", "job.sh", f"""\
        #!/usr/bin/env bash
        sleep 1.5
        echo "$1" >> {log}
        """)
    profile = local_profile(tmp_path, slots=2)
    proc = subprocess.Popen([sys.executable, "-m", "runaway", "batch", str(profile),
                             str(script), "--name", "k", "--json", "--",
                             "{" + ";".join(map(str, range(6))) + "}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    started = 0
    for line in proc.stdout:
        started += json.loads(line)["event"] == "ExecutionStarted"
        if started >= 2:
            break
    deadline = time.monotonic() + 30
    while not _keepers(tmp_path):
        assert time.monotonic() < deadline, "no keeper started"
        time.sleep(0.05)
    time.sleep(0.3)  # its scripts started
    [keeper] = _keepers(tmp_path)
    assert f"{tmp_path}/remote/agent/" in _cmdline(keeper)  # the agent's own, as forked
    os.kill(keeper, signal.SIGKILL)
    proc.stdout.read()
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    final = rows(tmp_path / "batch" / "k")
    assert [r[1] for r in final] == ["completed"] * 6
    assert sum(r[2] for r in final) >= 1  # the runs it watched were lost and run again
    lines = log.read_text().split()
    assert sorted(set(lines), key=int) == [str(i) for i in range(6)]
    left = subprocess.run(["pgrep", "-f", f"{tmp_path}/remote/agent/"], capture_output=True)
    assert left.stdout == b""  # neither agent nor keeper left


def test_a_run_that_removes_its_own_folder_does_not_take_the_keeper_down(tmp_path):
    """Its exit code cannot be written: it alone is lost (and run again); the others finish,
    and the keeper ends with the batch."""
    marker = tmp_path / "removed-once"
    script = write_script(tmp_path / "code", "job.sh", f"""\
        #!/usr/bin/env bash
        if [ "$1" = 0 ] && [ ! -e {marker} ]; then touch {marker}; rm -rf "$PWD"; fi
        sleep 0.2
        """)
    _run(tmp_path, script, "gone", "{" + ";".join(map(str, range(5))) + "}")
    final = rows(tmp_path / "batch" / "gone")
    assert [r[1] for r in final] == ["completed"] * 5
    assert final[0][2] == 1 and sum(r[2] for r in final) == 1  # lost once, then run again
    left = subprocess.run(["pgrep", "-f", f"{tmp_path}/remote/agent/"], capture_output=True)
    assert left.stdout == b""


def test_an_interpreter_is_looked_up_in_the_profiles_path_as_the_wrapper_does(tmp_path):
    tools = tmp_path / "tools"
    write_script(tools, "bash", '#!/bin/sh\necho "the profile\'s bash"\nexec /bin/bash "$@"\n')
    script = write_script(tmp_path / "code", "job.sh", "echo ran\n", executable=False)
    [folder] = _run(tmp_path, script, "path", "x",
                    env={"PATH": f"{tools}:/usr/local/bin:/usr/bin:/bin"})
    assert (folder / "stdout").read_text() == "the profile's bash\nran\n"


def test_read_bytes_gives_a_whole_file_or_none(tmp_path):
    """Read with bare descriptors: a file larger than one read comes whole; a missing file,
    a folder, or a path through a file is None (the driver reads files most folders lack)."""
    from liborchestra.node_keeper import read_bytes

    big = os.urandom(3 << 20 | 17)
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    assert read_bytes(str(tmp_path / "big")) == big
    assert read_bytes(str(tmp_path / "empty")) == b""
    assert read_bytes(str(tmp_path / "missing")) is None
    assert read_bytes(str(tmp_path / "folder")) is None
    assert read_bytes(str(tmp_path / "big" / "below")) is None
    before = len(os.listdir("/proc/self/fd"))
    for name in ("big", "folder", "missing"):
        read_bytes(str(tmp_path / name))
    assert len(os.listdir("/proc/self/fd")) == before  # no descriptor left open
