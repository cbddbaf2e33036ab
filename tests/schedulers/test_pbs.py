"""PBS: end to end on the test bed's PBS-style wrappers (Slurm's `slurm-wlm-torque`, not a real
PBS), and the parsers on two kinds of text, kept apart:

- CAPTURED_*: output of the bed's wrappers, captured byte for byte;
- TORQUE_*: real Torque formats, written here from Torque's documented `qstat -f` / `qstat -a`
  layout (4-space indented attributes, tab-indented continuation lines, `123.server` ids,
  `exit_status`), NOT captured from a running Torque: none was available.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest

from liborchestra import Engine, Execution, State
from liborchestra.schedulers.pbs import (
    PBSScheduler,
    cut_short,
    parse_nodefile,
    parse_qstat_full,
    parse_qstat_user,
    short_id,
    walltime_text,
)
from liborchestra.ssh import Limits, SSHPool
from tests.helpers import load, ssh_options, write_profile, write_script
from tests.schedulers.scenarios import (
    cancel_from_outside,
    interrupt_mid_execution,
    interrupt_pending_request,
    our_processes,
    parse,
    run,
    runaway,
)

REPO = Path(__file__).resolve().parents[2]
ENV_SCRIPT = """\
#!/usr/bin/env bash
echo "host=$(hostname) node=$RUNAWAY_NODE_ID handle=$RUNAWAY_HANDLE_ID \
handles=${RUNAWAY_HANDLES// /,} nodes=${RUNAWAY_NODES// /,}"
sleep "${1:-0}"
"""


def pbs_profile(testbed, tmp: Path, slots=2, **scheduler) -> Path:
    return write_profile(tmp / "profiles", "pbs", {
        "ssh": ssh_options(testbed, host="login"),
        "scheduler": {"kind": "pbs", "walltime": "10m", "idle_timeout": "30s", **scheduler},
        "slots": slots,
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}",
        "env": {"PATH": f"{testbed.pbs_bin}:/usr/local/bin:/usr/bin:/bin"}})


def our_jobs(testbed) -> list[tuple[str, str, str]]:
    """Jobs of an engine (named orch-...) that qstat does not show as completed."""
    out = testbed.ssh("login", f"PATH={testbed.pbs_bin}:$PATH qstat -u \"$USER\"",
                      check=True).stdout
    return [row for row in parse_qstat_user(out) if row[1].startswith("orch-") and row[2] != "C"]


def assert_nothing_left(testbed, *markers: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while our_jobs(testbed) or our_processes(testbed, "-holder", *markers):
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert our_jobs(testbed) == []
    assert our_processes(testbed, "-holder", *markers) == []


# -- parsers -----------------------------------------------------------------------------------

CAPTURED_QSTAT_F = """\
Job Id:\t93
\tJob_Name = orch-capture01
\tJob_Owner = hpcuser@localhost
\tjob_state = R
\tqueue = debug
\tqtime = Sat Nov 21 18:05:28 2026
\tmtime = Sat Nov 21 18:05:29 2026
\tctime = Sat Nov 21 18:07:29 2026
\texec_host = node1/4+node2/4+node3/4
\tPriority = 4294901667
\teuser = hpcuser(1001)
\tegroup = hpcuser(1001)
\tResource_List.walltime = 00:02:00
\tResource_List.nodect = 3
\tResource_List.ncpus = 12

Job Id:\t94
\tJob_Name = orch-capture01
\tJob_Owner = hpcuser@localhost
\tjob_state = Q
\tqueue = debug
\tqtime = Sat Nov 21 18:05:28 2026
\tPriority = 4294901666
\teuser = hpcuser(1001)
\tegroup = hpcuser(1001)
\tResource_List.walltime = 00:02:00
\tResource_List.nodect = 3
\tResource_List.ncpus = 12

"""

CAPTURED_QSTAT_U = """\

login:
                                                                               Req'd  Req'd   Elap 
Job id               Username Queue    Name                 SessID NDS   TSK   Memory Time Use S Time 
-------------------- -------- -------- -------------------- ------ ----- ----- ------ ----- - -----
91                   hpcuser  debug    orch-7b3f4653a5      --         1     2     -- 00:10 C 00:00
93                   hpcuser  debug    orch-capture01       --         3    12     -- 00:02 R 00:00
94                   hpcuser  debug    orch-capture01       --         3    12     -- 00:02 Q 00:00
"""  # noqa: E501, W291 (the wrapper pads its lines: kept byte for byte)

TORQUE_QSTAT_F = """\
Job Id: 4127.torque-server.example.org
    Job_Name = orch-0123456789
    Job_Owner = alice@login.example.org
    resources_used.cput = 00:00:00
    resources_used.walltime = 00:12:41
    job_state = R
    queue = batch
    server = torque-server.example.org
    Checkpoint = u
    ctime = Tue Mar  5 10:02:11 2024
    Error_Path = login.example.org:/dev/null
    exec_host = n012/0-3+n013/0-3
    Hold_Types = n
    Join_Path = n
    Output_Path = login.example.org:/dev/null
    Resource_List.nodect = 2
    Resource_List.nodes = 2:ppn=4
    Resource_List.walltime = 01:00:00
    session_id = 20731
    Variable_List = PBS_O_QUEUE=batch,PBS_O_HOME=/home/alice,PBS_O_LOGNAME=alice,
\tPBS_O_PATH=/usr/local/bin:/usr/bin:/bin,PBS_O_SHELL=/bin/bash,
\tPBS_O_WORKDIR=/home/alice/.orchestra/pbs
    euser = alice
    egroup = users
    Walltime.Remaining = 2839
    submit_host = login.example.org

Job Id: 4128.torque-server.example.org
    Job_Name = orch-0123456789
    Job_Owner = alice@login.example.org
    job_state = C
    queue = batch
    server = torque-server.example.org
    exec_host = n014/0-3
    exit_status = 271
    Resource_List.nodes = 1:ppn=4
    Resource_List.walltime = 01:00:00
    comp_time = 1709633050

"""

TORQUE_QSTAT_A = """\

torque-server.example.org:
                                                                         Req'd    Req'd       Elap
Job ID                  Username    Queue    Jobname          SessID  NDS   TSK   Memory   Time    S   Time
----------------------- ----------- -------- ---------------- ------ ----- ------ ------ --------- - ---------
4127.torque-server.exa  alice       batch    orch-0123456789   20731     2      8    --   01:00:00 R  00:12:41
4129.torque-server.exa  alice       batch    other-job            --     1      1    --   00:30:00 Q       --
"""  # noqa: E501


def test_qstat_parsing_on_captured_wrapper_output():
    jobs = parse_qstat_full(CAPTURED_QSTAT_F)
    assert jobs["93"]["job_state"] == "R" and jobs["94"]["job_state"] == "Q"
    assert jobs["93"]["exec_host"] == "node1/4+node2/4+node3/4"
    assert jobs["93"]["Job_Name"] == "orch-capture01"
    assert parse_qstat_user(CAPTURED_QSTAT_U) == [
        ("91", "orch-7b3f4653a5", "C"), ("93", "orch-capture01", "R"),
        ("94", "orch-capture01", "Q")]


def test_qstat_parsing_on_torque_documented_format():
    jobs = parse_qstat_full(TORQUE_QSTAT_F)
    assert set(jobs) == {"4127", "4128"}  # matched by the number, whatever the server suffix
    assert jobs["4127"]["job_state"] == "R"
    assert jobs["4127"]["Variable_List"].endswith("PBS_O_WORKDIR=/home/alice/.orchestra/pbs")
    assert jobs["4128"] == {**jobs["4128"], "job_state": "C", "exit_status": "271"}
    assert parse_qstat_user(TORQUE_QSTAT_A) == [
        ("4127", "orch-0123456789", "R"), ("4129", "other-job", "Q")]
    assert short_id("4127.torque-server.example.org\n") == "4127"


PBSPRO_QSTAT_U = """\

pbsserver:
                                                            Req'd  Req'd   Elap
Job ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time
--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----
1043.pbsserver  alice    workq    orch-0123*     --   2   8    --  01:00 Q   --
1044.pbsserver  alice    workq    orch-4567*  20731   1   1    --  00:30 R 00:02
"""  # PBS Pro's alternative format: a name longer than its column ends in `*`


def test_a_name_qstat_u_cuts_short_is_told_from_a_whole_one():
    assert parse_qstat_user(PBSPRO_QSTAT_U) == [
        ("1043", "orch-0123*", "Q"), ("1044", "orch-4567*", "R")]
    assert cut_short("orch-0123*", "orch-0123456789")  # PBS Pro's mark
    assert cut_short("orch-0123456789abcde", "orch-0123456789abcdefXYZW")  # Torque: no mark
    assert not cut_short("orch-4567*", "orch-0123456789")
    assert not cut_short("orch-0123456789", "orch-0123456789")  # whole: the name itself
    assert not cut_short("orch-0123456789x", "orch-0123456789")  # longer: another name
    assert not cut_short("*", "orch-0123456789")


def test_nodefile_request_and_holder_text(tmp_path):
    start, hosts = parse_nodefile("1795284167\nn012\nn012\nn013\nn012\n")
    assert start == 1795284167 and hosts == [("n012", 3), ("n013", 1)]
    assert walltime_text(90000.2) == "25:00:01"
    profile = load(write_profile(tmp_path, "pbs", {
        "ssh": {"host": "login.example.org"}, "slots": 4,
        "scheduler": {"kind": "pbs", "nodes": 2}}))
    scheduler = PBSScheduler(profile, SSHPool(Limits()))  # builds text only: never connects
    assert len(scheduler.name) <= 15  # PBS shows (and classic PBS keeps) 15 characters
    assert scheduler.resources(3600) == "nodes=2:ppn=4,walltime=01:00:00"
    holder = scheduler.holder('"$HOME"/x/orch-1.0', 3600)
    assert holder.splitlines()[1:3] == [f"#PBS -N {scheduler.name}",
                                        "#PBS -l nodes=2:ppn=4,walltime=01:00:00"]


# -- the real test bed (PBS-style wrappers over Slurm) -----------------------------------------

def test_exec_runs_on_the_granted_node_and_slot(testbed, tmp_path):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    start = time.monotonic()
    done = runaway("-v", "exec", pbs_profile(testbed, tmp_path), script, cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    seen = parse(done.stdout)
    assert seen["host"] == seen["node"] and seen["node"] in testbed.nodes
    assert seen["handles"] == "0,1"  # nodes=1:ppn=2
    assert elapsed < 30
    assert_nothing_left(testbed)


def test_nodes_and_processors_are_the_granted_ones(testbed, tmp_path):
    """nodes=2:ppn=2. The wrappers turn it into `sbatch -N2 -n4`, which Slurm may spread 3+1:
    each node offers the processors its node list grants."""
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = load(pbs_profile(testbed, tmp_path, slots=2, nodes=2))

    async def main():
        async with Engine(profile) as engine:
            results = await asyncio.gather(*[
                engine.submit(Execution(script, ["1"], output=tmp_path / f"o{i}"))
                for i in range(4)])
            return results, list(engine.allocator.live.values())

    results, live = run(main())
    assert all(r.ok for r in results), [r.message for r in results]
    (allocation,) = live
    assert allocation.slots == 4 and len(allocation.nodes) == 2
    pairs = {(parse((tmp_path / f"o{i}/stdout").read_text())["node"],
              parse((tmp_path / f"o{i}/stdout").read_text())["handle"]) for i in range(4)}
    assert len(pairs) == 4
    assert_nothing_left(testbed)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_no_job_and_no_process(testbed, tmp_path, sig):
    marker, _ = interrupt_mid_execution(testbed, tmp_path, pbs_profile(testbed, tmp_path), sig,
                                        our_jobs, processes=1)
    assert_nothing_left(testbed, marker)


def test_interrupt_while_the_request_waits_withdraws_it(testbed, tmp_path):
    """A holder job on hold (`-h`) waits forever; Ctrl-C must not leave it queued."""
    profile = pbs_profile(testbed, tmp_path, options=["-h"])
    queued = interrupt_pending_request(testbed, tmp_path, profile, our_jobs)
    assert queued[0][2] == "Q"
    assert_nothing_left(testbed)


def test_allocation_deleted_outside_is_noticed_and_replaced(testbed, tmp_path):
    profile = load(pbs_profile(testbed, tmp_path, poll_interval="1s"))
    job, lost, noticed, again, live, _, marker = cancel_from_outside(
        testbed, tmp_path, profile, f"{testbed.pbs_bin}/qdel")
    assert lost.state is State.LOST and f"allocation {job} ended" in lost.message
    assert "job_state C" in lost.message or "gone" in lost.message
    assert noticed < 5  # poll_interval 1 s
    assert again.ok and live and live[0] != job
    assert_nothing_left(testbed, marker)


def test_refused_allocation_is_one_clear_error_within_seconds(testbed, tmp_path):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = pbs_profile(testbed, tmp_path, nodes=5)  # the bed has 3 nodes
    start = time.monotonic()
    done = runaway("exec", profile, script, cwd=tmp_path, timeout=60)
    assert time.monotonic() - start < 15
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pbs on login" in lines[0], lines
    assert "`qsub -l nodes=5:ppn=2,walltime=00:10:00` refused" in lines[0]
    assert "Node count specification invalid" in lines[0]
    assert_nothing_left(testbed)


def test_repository_testbed_profile_runs(testbed, tmp_path):
    done = runaway("exec", "testbed-pbs", "examples/hello.sh", "-o", tmp_path / "out", "--",
                   "bed", cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello bed from node")
    assert (tmp_path / "out/greeting.txt").read_text() == "bed\n"
    assert_nothing_left(testbed)
