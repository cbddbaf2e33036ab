"""The node agent on the real bed: what a batch runs through it, its death mid-batch, a node
without a usable python3, srun steps, and unplugging a node's link for longer than the
keepalive allows. Each fault test asserts that every execution completed exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from liborchestra.profile import ProfileError, parse_profile
from tests.helpers import slurm_profile, ssh_options, write_profile, write_script
from tests.runaway.test_batch_faults import SCRIPT, exactly_once, rows, with_log
from tests.schedulers.scenarios import slurm_jobs_left


def _batch(profile: Path, script: Path, name: str, n: int, cwd: Path, *extra: str):
    return subprocess.Popen(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", name,
         "--json", *extra, "--", "{" + ";".join(str(i) for i in range(n)) + "}"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _events(proc, timeout: float = 240, until=None) -> list[dict]:
    """The --json events until the batch ends (or until `until(events)` holds)."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(json.loads(line))
        if until is not None and until(seen):
            return seen
        assert time.monotonic() < deadline, "batch took too long"
    proc.wait(timeout=30)
    return seen


def _names(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["event"] == name]


def _hosts(testbed, tmp: Path, nodes: tuple[str, ...], slots: int, ssh: dict | None = None,
           **extra) -> Path:
    return write_profile(tmp / "profiles", "nodes", {
        "ssh": ssh_options(testbed, host="login", **(ssh or {})),
        "scheduler": {"kind": "hosts", "hosts": [{"host": n, "slots": slots} for n in nodes]},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}", **extra})


def _local(tmp: Path, name: str, **extra) -> tuple[Path, Path]:
    """A script echoing its argument, and a `local` profile with its own `tmp/remote`."""
    script = write_script(tmp / "code", "job.sh", "#!/usr/bin/env bash\necho \"got $1\"\n")
    return script, write_profile(tmp / "profiles", name, {
        "scheduler": {"kind": "local"}, "slots": 2, "directory": str(tmp / "remote"), **extra})


def _wrapper_said_once(proc, reason: str) -> list[dict]:
    """The batch ends well through the wrapper, its one AgentUnavailable naming `reason`."""
    seen = _events(proc)
    assert proc.returncode == 0, proc.stderr.read()
    said = _names(seen, "AgentUnavailable")
    assert len(said) == 1 and reason in said[0]["reason"], said
    assert _names(seen, "AgentStarted") == []
    return seen


def test_a_batch_runs_through_one_agent_per_node_with_results_fetched(testbed, tmp_path):
    script = write_script(tmp_path / "code", "job.sh", (
        "#!/usr/bin/env bash\necho \"out $1\"; echo \"err $1\" >&2\n"
        "mkdir -p res; echo \"$1\" > res/value.txt; echo big > skip.bin; exit $(( $1 % 4 ))\n"))
    (tmp_path / "code" / ".fetchignore").write_text("*.bin\n")
    profile = _hosts(testbed, tmp_path, ("node1", "node3"), 3)
    proc = _batch(profile, script, "agent", 12, tmp_path)
    seen = _events(proc)
    assert proc.returncode == 1, proc.stderr.read()  # 3 of 12 exit non-zero
    started = _names(seen, "AgentStarted")
    assert sorted(e["node"] for e in started) == ["node1", "node3"]  # one each, not per run
    assert _names(seen, "AgentUnavailable") == []
    final = rows(tmp_path / "batch/agent")
    assert [r[1] for r in final] == [("failed" if i % 4 else "completed") for i in range(12)]
    by_arg = {}
    for folder in (tmp_path / "batch/agent").iterdir():
        if folder.is_dir():
            by_arg[(folder / "res/value.txt").read_text().strip()] = folder
    assert sorted(by_arg, key=int) == [str(i) for i in range(12)]
    for arg, folder in by_arg.items():
        assert (folder / "stdout").read_text() == f"out {arg}\n"
        assert (folder / "stderr").read_text() == f"err {arg}\n"
        assert (folder / "ecode").read_text().strip() == str(int(arg) % 4)
        assert not (folder / "skip.bin").exists()  # .fetchignore honoured by the agent
        assert not (folder / "job.sh").exists()  # the code itself is not fetched back


def test_a_killed_agent_loses_nothing_and_is_started_again(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "1.5"))
    profile = _hosts(testbed, tmp_path, ("node1", "node2"), 3)
    proc = _batch(profile, script, "kill", 24, tmp_path)
    seen = _events(proc, until=lambda s: len(_names(s, "ExecutionStarted")) >= 8)
    killed = testbed.on("node1", "pkill", "-KILL", "-u", testbed.user, "-x", "runaway-agent")
    assert killed.returncode == 0, killed.stderr  # an agent was there, and died
    seen += _events(proc)
    assert proc.returncode == 0, proc.stderr.read()
    assert [r[1] for r in rows(tmp_path / "batch/kill")] == ["completed"] * 24
    exactly_once(log, 24)  # its runs went on detached, and were reattached, not re-run
    nodes = [e["node"] for e in _names(seen, "AgentStarted")]
    assert nodes.count("node1") >= 2 and nodes.count("node2") == 1, nodes
    left = [p for n in ("node1", "node2") for p in testbed.procs(n) if "/agent/" in p]
    assert left == []  # every agent ended with its channel


def test_without_a_usable_python_the_wrapper_runs_and_says_so_once(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path)
    profile = _hosts(testbed, tmp_path, ("node1",), 3, agent="/nonexistent/python3")
    _wrapper_said_once(_batch(profile, script, "nopy", 9, tmp_path), "/nonexistent/python3")
    exactly_once(log, 9)


def test_an_old_python_gets_the_wrapper_and_one_line_saying_so(tmp_path):
    """The agent is started by one command that says what the node lacks: here a python3
    that reports 3.7 (the real one, told so) runs no agent; the wrapper runs everything."""
    fake = tmp_path / "python3"
    fake.write_text("#!/usr/bin/env bash\n"  # called as: OPTIONS -c BOOTSTRAP AGENT_PATH
                    "exec python3 -c 'import sys; sys.version_info = (3, 7, 17); "
                    "exec(sys.argv.pop(1))' \"${@: -2:1}\" \"${@: -1}\"\n")
    fake.chmod(0o755)
    script, profile = _local(tmp_path, "old", agent=str(fake))
    _wrapper_said_once(_batch(profile, script, "old", 6, tmp_path), "older than 3.8")
    assert [r[1] for r in rows(tmp_path / "batch/old")] == ["completed"] * 6
    assert not (tmp_path / "remote" / "agent").exists()  # nothing installed for it


@pytest.mark.parametrize("damage", ["cut", "broken"])
def test_a_damaged_agent_file_is_installed_again(tmp_path, damage):
    """A node's copy cut short (told by its size: half a file may still import, without
    what comes after) or that does not import (same size, broken) is not a dead node: the
    start command says so, the files are sent again, and the agent runs."""
    from liborchestra.agent import DIGEST, SOURCES

    remote = tmp_path / "remote"
    folder = remote / "agent" / DIGEST
    folder.mkdir(parents=True)
    for name, source in SOURCES.items():
        if name == "node_agent.py":
            broken = b"import no_such_module_here\n"
            source = source[:len(source) // 2] if damage == "cut" \
                else broken + source[len(broken):]
        (folder / name).write_bytes(source)
    script, profile = _local(tmp_path, "cut")
    proc = _batch(profile, script, "cut", 4, tmp_path)
    seen = _events(proc)
    assert proc.returncode == 0, proc.stderr.read()
    assert len(_names(seen, "AgentStarted")) == 1
    assert _names(seen, "AgentUnavailable") == [] and _names(seen, "ConnectionProblem") == []
    assert (folder / "node_agent.py").read_bytes() == SOURCES["node_agent.py"]
    assert [r[1] for r in rows(tmp_path / "batch/cut")] == ["completed"] * 4


def test_exec_starts_no_agent(tmp_path):
    """`runaway exec` streams its output past the agent: the allocation's warm-up, for the
    work that goes through agents, starts none for it."""
    remote = tmp_path / "remote"
    script, profile = _local(tmp_path, "ex")
    done = subprocess.run([sys.executable, "-m", "runaway", "exec", str(profile), str(script),
                           "--", "hello"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "hello" in done.stdout, done.stderr
    assert (remote / "code").is_dir() and not (remote / "agent").exists()


def test_the_agent_runs_in_an_srun_step(testbed, tmp_path):
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "0.2"))
    profile = slurm_profile(testbed, tmp_path, reach="srun")
    proc = _batch(profile, script, "srun", 10, tmp_path)
    seen = _events(proc)
    assert proc.returncode == 0, proc.stderr.read()
    assert len(_names(seen, "AgentStarted")) == 1
    exactly_once(log, 10)
    assert slurm_jobs_left(testbed) == []


@pytest.mark.parametrize("reach", ["ssh", "srun"])
def test_the_agents_leave_no_run_or_spare_folder_behind(testbed, tmp_path, reach):
    """The last run folders go to the agents, which remove them with their spares as they
    leave; the driver waits for that before the allocation goes (which kills an agent in an
    srun step)."""
    script = write_script(tmp_path / "code", "hi.sh", "#!/usr/bin/env bash\necho hi $1\n")
    profile = slurm_profile(testbed, tmp_path, reach=reach)
    proc = _batch(profile, script, "leave", 60, tmp_path)
    seen = _events(proc)
    assert proc.returncode == 0, proc.stderr.read()
    assert _names(seen, "ConnectionProblem") == []  # leaving is not a lost agent
    assert len(_names(seen, "ExecutionFinished")) == 60
    root = yaml.safe_load(profile.read_text())["directory"]
    left = testbed.ssh("node1", f"find {root}/runs {root}/spare -mindepth 1 | head -3",
                       check=False)
    assert left.returncode == 0 and left.stdout == "", left.stdout + left.stderr
    assert slurm_jobs_left(testbed) == []


def test_a_node_unplugged_past_the_keepalive_reruns_elsewhere_and_records_once(testbed,
                                                                               tmp_path):
    """Its runs are lost to the driver (the connection times out), run again on the other
    node, and the copies that finish on the unplugged node later are not recorded twice."""
    script, log = with_log(testbed, tmp_path, SCRIPT.replace("${SLEEP:-0.5}", "3"))
    profile = _hosts(testbed, tmp_path, ("node1", "node2"), 2,
                     ssh={"keepalive": "1s", "connect_timeout": "2s"})
    proc = _batch(profile, script, "unplug", 8, tmp_path)
    try:
        first = _events(proc, until=lambda s: len(_names(s, "ExecutionStarted")) >= 4)
        testbed.unplug("node1")
        seen = _events(proc, timeout=300)
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        testbed.plug("node1")
    final = rows(tmp_path / "batch/unplug")
    assert [r[1] for r in final] == ["completed"] * 8
    assert sum(r[2] for r in final) >= 1  # node1's were lost and requeued
    finished = [e for e in _names(seen, "ExecutionFinished")
                if e["result"]["state"] == "completed"]
    assert len({e["result"]["uuid"].split(".")[0] for e in finished}) == 8
    # node1's copies (their 3-second sleep long over) may still log once its link is back,
    # in their own sessions: wait for them, up to a margin
    expected = 8 + len([e for e in _names(first, "ExecutionStarted") if e["node"] == "node1"])
    deadline = time.monotonic() + 4
    while len(log.read_text().split()) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = log.read_text().split()
    assert sorted(set(lines), key=int) == [str(i) for i in range(8)]  # each ran, some twice
    assert [r[1] for r in rows(tmp_path / "batch/unplug")] == ["completed"] * 8


@pytest.mark.parametrize("value, expected", [(True, "python3"), (False, None),
                                             ("/opt/py/bin/python3", "/opt/py/bin/python3")])
def test_the_agent_field(value, expected):
    profile = parse_profile({"scheduler": {"kind": "local"}, "agent": value}, "p.yml")
    assert profile.agent == expected


def test_a_bad_agent_field_names_it():
    with pytest.raises(ProfileError, match="agent"):
        parse_profile({"scheduler": {"kind": "local"}, "agent": 3}, "p.yml")


@pytest.mark.parametrize("agent", [True, False])
def test_a_relative_directory_is_taken_from_home_with_or_without_the_agent(tmp_path, agent):
    """`directory: remote` on local lost every execution (status 96): the wrapper changed
    folder before it used the relative path."""
    home = tmp_path / "home"
    home.mkdir()
    script = write_script(tmp_path / "code", "job.sh", "#!/usr/bin/env bash\necho \"got $1\"\n")
    profile = write_profile(tmp_path / "profiles", "rel", {
        "scheduler": {"kind": "local"}, "slots": 2, "directory": "remote", "agent": agent})
    done = subprocess.run(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", "rel",
         "--", "{a;b;c}"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert [r[1] for r in rows(tmp_path / "batch/rel")] == ["completed"] * 3
    assert (home / "remote" / "code").is_dir()  # the code went under $HOME/remote


@pytest.mark.parametrize("agent", [True, False])
def test_code_archive_removed_mid_batch_is_sent_again(tmp_path, agent):
    """Pruned by another driver or by `runaway clean` while this one waited: the execution
    that finds it gone is lost and requeued, and the archive is sent again (it was believed
    present for good, so every later start failed)."""
    remote = tmp_path / "remote"
    script = write_script(tmp_path / "code", "job.sh", "#!/usr/bin/env bash\nsleep 0.3\n")
    profile = write_profile(tmp_path / "profiles", "loc", {
        "scheduler": {"kind": "local"}, "slots": 2, "directory": str(remote), "agent": agent})
    proc = _batch(profile, script, "gone", 16, tmp_path)
    seen = _events(proc, until=lambda s: len(_names(s, "ExecutionStarted")) >= 4)
    for archive in (remote / "code").glob("*.tar"):
        archive.unlink()
    seen += _events(proc)
    assert proc.returncode == 0, proc.stderr.read()
    final = rows(tmp_path / "batch/gone")
    assert [r[1] for r in final] == ["completed"] * 16
    assert sum(r[2] for r in final) >= 1  # the one that found it gone was lost, then re-run
    assert len(_names(seen, "CodeSent")) == 2


@pytest.mark.parametrize("agent", [True, False])
def test_the_run_folder_holds_the_code_as_archived_and_every_file_the_run_made(tmp_path, agent):
    """The agent writes the code from memory (modes, links, nested folders as tar would), and
    what the run made is told from the code by time: a file the run wrote with an old date (a
    dataset unpacked from a tarball) comes back too; the code does not. An 80 KB argument
    reaches the script verbatim (its wrapper script is too long for a command line)."""
    code = tmp_path / "code"
    script = write_script(code, "job.sh", (
        "#!/usr/bin/env bash\nset -e\ntest -x sub/deep/tool.sh; test ! -x sub/data.txt\n"
        "[ \"$(readlink link)\" = sub/data.txt ]; [ \"$(cat link)\" = data ]\n"
        "sub/deep/tool.sh > made.txt; touch -d 2001-01-01 old.txt\n"
        "printf '%s' \"$1\" | wc -c\n"))
    (code / "sub" / "deep").mkdir(parents=True)
    (code / "sub" / "data.txt").write_text("data")
    tool = code / "sub" / "deep" / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (code / "link").symlink_to("sub/data.txt")
    profile = write_profile(tmp_path / "profiles", "loc", {
        "scheduler": {"kind": "local"}, "slots": 2, "directory": str(tmp_path / "remote"),
        "agent": agent})
    size = 80000  # past 64 KB quoted: from the agent a file, from the wrapper's stdin
    long = "x$(y)" * (size // 5)  # shell syntax and all
    done = subprocess.run(
        [sys.executable, "-m", "runaway", "batch", str(profile), str(script), "--name", "c",
         "--", long], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [folder] = [f for f in (tmp_path / "batch/c").iterdir() if f.is_dir()]
    assert (folder / "stdout").read_text().strip() == str(size), (folder / "stderr").read_text()
    assert (folder / "made.txt").read_text() == "tool\n"
    assert (folder / "old.txt").exists()
    assert not (folder / "sub").exists()
    assert not os.path.lexists(folder / "link")  # the code's link is code, not a result


@pytest.mark.parametrize("agent", [True, False])
def test_scripts_get_sigpipe_at_its_default_as_in_a_terminal(tmp_path, agent):
    """Python ignores SIGPIPE and the agent is Python: its wrappers must not inherit that, or
    `producer | head` would go on until EPIPE and complain (`yes: Broken pipe`)."""
    script = write_script(tmp_path / "code", "job.sh",
                          "#!/usr/bin/env bash\nyes | head -1 > /dev/null; "
                          "echo \"status ${PIPESTATUS[0]}\"\n")
    profile = write_profile(tmp_path / "profiles", "loc", {
        "scheduler": {"kind": "local"}, "slots": 1, "directory": str(tmp_path / "remote"),
        "agent": agent})
    done = subprocess.run([sys.executable, "-m", "runaway", "batch", str(profile), str(script),
                           "--name", "p", "-x", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [folder] = [f for f in (tmp_path / "batch/p").iterdir() if f.is_dir()]
    assert (folder / "stdout").read_text() == "status 141\n"  # 128 + SIGPIPE
    assert (folder / "stderr").read_text() == ""


@pytest.mark.parametrize("agent", [True, False])
def test_the_profiles_env_is_not_on_a_command_line_and_no_stray_fd_reaches_the_script(
        tmp_path, agent):
    """Every user of a node can read every command line there: the wrapper's script (with
    the profile's env values) must not be one. The pipe it is read from is closed before
    the user's script starts."""
    script = write_script(tmp_path / "code", "job.sh", (
        "#!/usr/bin/env bash\n"
        "if tr '\\0' ' ' < /proc/$PPID/cmdline | grep -q hunter2; then echo leaked; fi\n"
        "for fd in 3 4 5 6 7 8 9; do [ -e /proc/$$/fd/$fd ] && echo \"fd $fd\"; done\n"
        "echo \"$TOKEN\"\n"))
    profile = write_profile(tmp_path / "profiles", "loc", {
        "scheduler": {"kind": "local"}, "slots": 1, "directory": str(tmp_path / "remote"),
        "agent": agent, "env": {"TOKEN": "hunter2"}})
    done = subprocess.run([sys.executable, "-m", "runaway", "batch", str(profile), str(script),
                           "--name", "e", "-x", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [folder] = [f for f in (tmp_path / "batch/e").iterdir() if f.is_dir()]
    out = (folder / "stdout").read_text()
    assert out == "hunter2\n", out  # not leaked, no fd beyond 0-2 inherited


def test_the_agents_wrapper_reads_its_script_from_memory_not_a_pipe(tmp_path):
    """bash reads a script from a pipe one byte per system call; from a memfd (seekable) in
    blocks. The user's script sees its parent, the wrapper, reading from the memfd. (A
    profile with setup lines runs its scripts under the wrapper, which runs them.)"""
    script = write_script(tmp_path / "code", "job.sh", (
        "#!/usr/bin/env bash\n"
        "for fd in /proc/$PPID/fd/*; do readlink \"$fd\"; done | grep -c '^/memfd:runaway'\n"))
    profile = write_profile(tmp_path / "profiles", "loc", {
        "scheduler": {"kind": "local"}, "slots": 1, "directory": str(tmp_path / "remote"),
        "setup": ["true"]})
    done = subprocess.run([sys.executable, "-m", "runaway", "batch", str(profile), str(script),
                           "--name", "m", "-x", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [folder] = [f for f in (tmp_path / "batch/m").iterdir() if f.is_dir()]
    assert (folder / "stdout").read_text() == "1\n"


def test_a_long_argument_reaches_the_script_through_the_wrapper_over_ssh(testbed, tmp_path):
    """Without the agent, over SSH: the wrapper's script (the argument twice in it) is sent on
    the channel's stdin, as a command it was longer than the kernel takes in one argument."""
    script = write_script(tmp_path / "code", "job.sh",
                          "#!/usr/bin/env bash\nprintf '%s' \"$1\" | md5sum | cut -c1-32\n")
    profile = _hosts(testbed, tmp_path, ("node1",), 1, agent=False)
    long = "y$(z)" * 18000  # 90,000 bytes
    done = subprocess.run([sys.executable, "-m", "runaway", "batch", str(profile), str(script),
                           "--name", "w", "--", long], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    [folder] = [f for f in (tmp_path / "batch/w").iterdir() if f.is_dir()]
    expected = hashlib.md5(long.encode()).hexdigest()
    assert (folder / "stdout").read_text().strip() == expected
