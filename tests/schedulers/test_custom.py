"""The custom scheduler on the real test bed: a legacy runaway profile run unchanged by
`runaway exec`, and the scheduler's own contract (variables, quoting, errors, cancellation,
walltime) with Slurm on `login` and nodes through a proxy command or `login` as a jump host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

from liborchestra import Engine, Execution, State, allocator, slots
from liborchestra.errors import SchedulerError
from liborchestra.profile import Profile, parse_profile
from liborchestra.schedulers.custom import CustomScheduler
from liborchestra.ssh import SSHPool
from tests.helpers import ARGV_SCRIPT, write_script

REPO = Path(__file__).resolve().parents[2]
NASTY = ["it's", 'say "hi"', "$(touch /tmp/pwned-{tag})", "a; touch /tmp/pwned-{tag}",
         "two  words", "$RUNAWAY_JOB_ID", "*", "l1\nl2", ""]


def run(coro):
    return anyio.run(lambda: coro, backend="asyncio")


# -- a legacy profile as a user has it: a Host of ~/.ssh/config ---------------------------------

def user_home(testbed, tmp: Path) -> Path:
    """A HOME whose ~/.ssh/config gives the frontend alias `tb-login` and the bed's key."""
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/config").write_text(
        "Host tb-login\n    HostName login\n"
        f"Host *\n    User {testbed.user}\n    IdentityFile {testbed.key}\n"
        f"    UserKnownHostsFile {testbed.known_hosts}\n    StrictHostKeyChecking yes\n")
    return home


def legacy_profile(testbed, tmp: Path) -> Path:
    """profiles/testbed-legacy.yml as it is (only the bed's folder, if not the default)."""
    text = (REPO / "profiles/testbed-legacy.yml").read_text()
    path = tmp / "testbed-legacy.yml"
    path.write_text(text.replace("/tmp/testbed/cluster", str(testbed.dir)))
    return path


def runaway_env(home: Path, job: str) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "RUNAWAY_JOB_NAME": job, "RUNAWAY_NODES_NB": "2"}


def our_jobs(testbed, job: str) -> list[str]:
    out = testbed.ssh("login", f"squeue -h -n {job} -o '%i %T'", check=True).stdout
    return out.split()


def final_state(testbed, job: str) -> str:
    """The sacct state of the job named `job` (accounting lags squeue a little)."""
    for _ in range(50):
        out = testbed.ssh("login", f"sacct -n -X -P -o State --name {job}").stdout.strip()
        if out and "RUNNING" not in out and "PENDING" not in out:
            return out
        time.sleep(0.2)
    return out


def leftovers(testbed, marker: str) -> list[str]:
    """Processes of this test on any host, or here. The marker is in the job name, which our
    remote scripts export, and in the environment of local proxy commands."""
    found = [p for host in testbed.hosts for p in testbed.procs(host) if marker in p]
    for pid in filter(str.isdigit, os.listdir("/proc")):  # here: proxy commands, salloc
        try:
            if any(marker.encode() in Path(f"/proc/{pid}/{what}").read_bytes()
                   for what in ("cmdline", "environ")) and int(pid) != os.getpid():
                found.append(f"local pid {pid}")
        except OSError:
            pass
    return found


def test_legacy_profile_runs_unchanged(testbed, tmp_path):
    tag = uuid.uuid4().hex[:8]
    job = f"legacy-{tag}"
    args = [a.format(tag=tag) for a in NASTY]
    script = write_script(tmp_path / "code", "argv.sh", ARGV_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-m", "runaway", "exec", str(legacy_profile(testbed, tmp_path)),
         str(script), "-o", str(tmp_path / "out"), "--", *args],
        cwd=tmp_path, env=runaway_env(user_home(testbed, tmp_path), job),
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    received = (tmp_path / "out/argv.bin").read_bytes().split(b"\0")[:-1]
    assert [r.decode() for r in received] == args
    assert not Path(f"/tmp/pwned-{tag}").exists()
    env = dict(line.split("=", 1) for line in
               (tmp_path / "out/env.txt").read_text().splitlines() if "=" in line)
    nodes = env["RUNAWAY_NODES"].split()
    assert len(nodes) == 2 and set(nodes) <= set(testbed.nodes)
    assert env["RUNAWAY_NODE_ID"] in nodes and done.stdout == f"on {env['RUNAWAY_NODE_ID']}\n"
    assert env["RUNAWAY_HANDLES"] == "0 1 2 3" and env["RUNAWAY_HANDLE_ID"] in ["0", "1", "2", "3"]
    assert env["RUNAWAY_REMOTE"] == "testbed-legacy"
    assert our_jobs(testbed, job) == []
    assert final_state(testbed, job).startswith("CANCELLED")
    assert leftovers(testbed, job) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_legacy_run_leaves_nothing(testbed, tmp_path, sig):
    job = f"legacy-{uuid.uuid4().hex[:8]}"
    script = write_script(tmp_path / "code", "slow.sh", f"""\
        echo started
        bash -c 'exec -a {job}-sleep sleep 300'
        """)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runaway", "exec", str(legacy_profile(testbed, tmp_path)),
         str(script)], cwd=tmp_path, env=runaway_env(user_home(testbed, tmp_path), job),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "started\n"
        deadline = time.monotonic() + 20
        while not any(f"{job}-sleep" in p for n in testbed.nodes for p in testbed.procs(n)):
            assert time.monotonic() < deadline, "the script never showed on a node"
            time.sleep(0.1)
        assert our_jobs(testbed, job) != []
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in proc.stderr.read()
    assert our_jobs(testbed, job) == []
    assert leftovers(testbed, job) == []


# -- the scheduler itself, on a profile in our own format ---------------------------------------

@pytest.fixture
def shared(tmp_path) -> Path:
    """A file on the cluster's shared home where cancel commands leave a trace."""
    path = Path("/home") / "hpcuser" / f"custom-test-{uuid.uuid4().hex[:8]}.log"
    yield path
    path.unlink(missing_ok=True)


def custom(testbed, proxy: bool = False, scheduler: dict | None = None, here: bool = False,
           **commands) -> Profile:
    """A custom profile: commands on `login` (Slurm's host), nodes through it or a proxy;
    `here`: commands on this machine instead (no ssh.host)."""
    fields = {
        "start_allocation": ["export RUNAWAY_NODES=node1"],
        "cancel_allocation": ["true"],
        "get_node_handles": ["export RUNAWAY_HANDLES='0 1'"],
        **commands, **(scheduler or {})}
    if proxy:
        *options, destination = testbed.ssh_argv("login")
        fields["node_proxycommand"] = " ".join([*options, "-W", "$RUNAWAY_NODE_ID:22",
                                                destination])
    ssh = {"user": testbed.user, "identity": [str(testbed.key)],
           "known_hosts": str(testbed.known_hosts)}
    return parse_profile({
        "name": "custom-test",
        **({} if here else {"ssh": {"host": "login", **ssh}}),
        "scheduler": {"kind": "custom", **fields},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"}, "custom-test.yml")


async def allocate(profile, walltime=None, then=None):
    async with SSHPool() as pool:
        scheduler = CustomScheduler(profile, pool)
        allocation = await scheduler.allocate(walltime)
        try:
            return allocation, (await then(scheduler, allocation)) if then else None
        finally:
            with anyio.CancelScope(shield=True):
                await scheduler.release(allocation)
                await scheduler.release(allocation)  # a second time does nothing
                await scheduler.aclose()


@pytest.mark.parametrize("proxy", [False, True], ids=["jump", "proxycommand"])
def test_variables_quoting_and_forwarding(testbed, shared, monkeypatch, proxy):
    tag = uuid.uuid4().hex[:8]
    forwarded = f"it's \"q\" $HOME $(touch /tmp/pwned-{tag}); a`id`"
    monkeypatch.setenv("RUNAWAY_FORWARDED", forwarded)
    monkeypatch.setenv("RUNAWAY_NODES", "ignored: the commands make it")
    profile = custom(
        testbed, proxy,
        start_allocation=[
            "export RUNAWAY_JOB_ID=job-$(echo 'it''s' | tr -d \"'\")",
            'export RUNAWAY_COPY="$RUNAWAY_FORWARDED"',
            "RUNAWAY_UNEXPORTED='kept too'",
            "export RUNAWAY_NODES=\"$(echo node3 node1 | sed -e 's/ /  /')\""],
        get_node_handles=[
            '[ "$RUNAWAY_COPY" = "$RUNAWAY_FORWARDED" ] || exit 9',
            'export RUNAWAY_HANDLES="$(hostname)-a $RUNAWAY_NODE_ID-b"'],
        cancel_allocation=[
            f"printf '%s|%s|%s\\n' \"$RUNAWAY_JOB_ID\" \"$RUNAWAY_COPY\" \"$RUNAWAY_UNEXPORTED\""
            f" >> {shared}"])
    allocation, _ = run(allocate(profile))
    assert allocation.id == "job-its"
    assert [n.name for n in allocation.nodes] == ["node3", "node1"]
    assert [n.handles for n in allocation.nodes] == [("node3-a", "node3-b"),
                                                     ("node1-a", "node1-b")]
    assert all((n.endpoint.proxy_command is not None) == proxy for n in allocation.nodes)
    assert shared.read_text() == f"job-its|{forwarded}|kept too\n"  # cancelled once
    assert not Path(f"/tmp/pwned-{tag}").exists()


def test_frontend_on_this_machine_and_ssh_config_from_home(testbed, tmp_path, monkeypatch):
    """Without ssh.host the commands run here, and nodes are reached as `ssh node` would:
    user, key and known_hosts from the user's ~/.ssh/config."""
    monkeypatch.setenv("HOME", str(user_home(testbed, tmp_path)))
    profile = parse_profile({"name": "here", "scheduler": {
        "kind": "custom",
        "start_allocation": ["IFS=:", "export RUNAWAY_NODES=node2 RUNAWAY_HERE=$(hostname)"],
        "cancel_allocation": [f'echo "$RUNAWAY_HERE" > {tmp_path}/cancelled'],
        "get_node_handles": ['export RUNAWAY_HANDLES="$RUNAWAY_HERE-to-$(hostname)"']}},
        "here.yml")
    allocation, _ = run(allocate(profile))
    here = os.uname().nodename
    assert [(n.name, n.handles) for n in allocation.nodes] == [("node2", (f"{here}-to-node2",))]
    assert (tmp_path / "cancelled").read_text() == f"{here}\n"


@pytest.mark.parametrize("commands, words", [
    ({"start_allocation": ["export RUNAWAY_JOB_ID=42"]},
     ["custom on login: start_allocation did not export RUNAWAY_NODES", "RUNAWAY_JOB_ID='42'"]),
    ({"start_allocation": ["export RUNAWAY_JOB_ID=42", "echo 'no luck' >&2; false", "echo x"]},
     ["start_allocation command 2 (`echo 'no luck' >&2; false`) failed with status 1",
      "no luck"]),
    ({"start_allocation": ["export RUNAWAY_JOB_ID=42",
                           "export RUNAWAY_NODES='node[1-2]'"]},
     ["'node[1-2]' is not a host name", "scontrol show hostnames"]),
    ({"start_allocation": ["export RUNAWAY_JOB_ID=42", "export RUNAWAY_NODES=node2"],
      "get_node_handles": ["echo 'no handles here' >&2"]},
     ["custom on node2: get_node_handles did not export RUNAWAY_HANDLES", "no handles here"]),
    ({"start_allocation": ["export RUNAWAY_JOB_ID=42", "export RUNAWAY_NODES=node3"],
      "node_proxycommand": "false"},
     ["cannot reach node node3 through node_proxycommand `false`"]),
])
def test_bad_commands_get_one_clear_error_and_are_undone(testbed, shared, commands, words):
    profile = custom(testbed, cancel_allocation=[f'echo "$RUNAWAY_JOB_ID" >> {shared}'],
                     **commands)
    with pytest.raises(SchedulerError) as caught:
        run(allocate(profile))
    for word in words:
        assert word in str(caught.value)
    assert shared.read_text() == "42\n"  # what had been allocated was cancelled


def test_node_names_are_data(testbed, tmp_path):
    tag = uuid.uuid4().hex[:8]
    profile = custom(testbed, proxy=True, start_allocation=[
        f"export RUNAWAY_NODES='node1 x$(touch${{IFS}}/tmp/pwned-{tag})'"])
    with pytest.raises(SchedulerError, match="is not a host name"):
        run(allocate(profile))
    assert not Path(f"/tmp/pwned-{tag}").exists()


@pytest.mark.parametrize("here", [False, True], ids=["on-login", "on-this-machine"])
def test_cancelled_request_is_withdrawn_on_the_cluster(testbed, shared, here):
    """A pending salloc interrupted by the engine: the script is killed (salloc then revokes
    its request) and the cancel commands run with what the commands had set."""
    job = f"pending-{uuid.uuid4().hex[:8]}"
    profile = custom(testbed, here=here, start_allocation=[
        "export RUNAWAY_STEP=first",
        f"salloc --no-shell --begin=now+3600 -J {job} -N1"],
        cancel_allocation=[f'echo "cancel after $RUNAWAY_STEP" >> {shared}'])

    async def main():
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(allocate, profile)
                while our_jobs(testbed, job) == []:
                    await anyio.sleep(0.2)
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught, "the request never showed in squeue"

    run(main())
    deadline = time.monotonic() + 10
    while our_jobs(testbed, job) or leftovers(testbed, job):
        assert time.monotonic() < deadline, (our_jobs(testbed, job), leftovers(testbed, job))
        time.sleep(0.2)
    assert shared.read_text() == "cancel after first\n"


def test_walltime_and_runaway_walltime(testbed):
    profile = custom(testbed, scheduler={"walltime": "1m"})
    allocation, _ = run(allocate(profile, 60))
    assert allocation.duration == 60 and allocation.ends_at is not None
    with pytest.raises(SchedulerError, match="allocations last 1 min"):
        run(allocate(profile, 600))  # longer work, and the commands cannot ask for more
    asks = custom(testbed, scheduler={"walltime": "1m"}, start_allocation=[
        '[ "$RUNAWAY_WALLTIME" = 10 ] || exit 5', "export RUNAWAY_NODES=node1"])
    allocation, _ = run(allocate(asks, 600))
    assert allocation.duration == 600


def test_allocation_ending_at_walltime_kills_its_executions(testbed, tmp_path, shared,
                                                            monkeypatch):
    """The cluster would end the job but not what we started over SSH: we kill it."""
    monkeypatch.setattr(slots, "WALLTIME_MARGIN", 0.5)
    monkeypatch.setattr(allocator, "WALLTIME_MARGIN", 0.5)
    marker = f"walltime-{uuid.uuid4().hex[:8]}"
    script = write_script(tmp_path / "code", "slow.sh",
                          f"bash -c 'exec -a {marker} sleep 300'\n")
    profile = custom(testbed, proxy=True, scheduler={"walltime": "4s", "poll_interval": "0.5s"},
                     cancel_allocation=[f"echo cancelled >> {shared}"])

    async def main():
        async with Engine(profile) as engine:
            return await engine.submit(Execution(script, output=tmp_path / "out"))

    started = time.monotonic()
    result = run(main())
    assert result.state is State.LOST and "walltime reached" in result.message
    assert time.monotonic() - started < 30
    assert leftovers(testbed, marker) == []
    assert shared.read_text() == "cancelled\n"
