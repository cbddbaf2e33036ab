"""Grid Engine on the real test bed: holder jobs, granted hosts and slots, no orphans, lost
allocations, refusals; and the parsers on output captured from the bed's Son of Grid Engine."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from liborchestra import Engine, Execution, State, events
from liborchestra.schedulers.sge import job_alive, parse_hostfile, parse_qacct, parse_qstat
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
GRANTED = re.compile(r"allocation (\d+): (\S+) \((\d+) slots\)")


def sge_profile(testbed, tmp: Path, slots="cores", **scheduler) -> Path:
    return write_profile(tmp / "profiles", "sge", {
        "ssh": ssh_options(testbed, host="login"),
        "scheduler": {"kind": "sge", "walltime": "10m", "idle_timeout": "30s", **scheduler},
        "slots": slots,
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"})


def our_jobs(testbed) -> list[str]:
    """The user's Grid Engine jobs named by an engine (qstat shows 10 characters of names)."""
    out = testbed.ssh("login", 'qstat -u "$USER"', check=True).stdout
    return [line for line in out.splitlines() if " orchestra- " in line]


def assert_nothing_left(testbed, *markers: str, within: float = 15) -> None:
    """No job of ours in qstat, no holder or script process on any node. A deleted job
    lingers a moment in state `dr` while execd kills it: allow `within` seconds for that."""
    deadline = time.monotonic() + within
    while our_jobs(testbed) or our_processes(testbed, "-holder", *markers):
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert our_jobs(testbed) == []
    assert our_processes(testbed, "-holder", *markers) == []


# -- parsers, on output captured from the test bed's Son of Grid Engine 8.1.9 ----------------

QSTAT = """\
job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID 
-----------------------------------------------------------------------------------------------------------------
      8 0.28969 t1         hpcuser      r     11/21/2026 18:02:47 all.q@node1                        6        
     19 0.50000 orchestra- hpcuser      dr    11/21/2026 18:05:04 all.q@node3                        4        
      9 0.75000 t2         hpcuser      qw    11/21/2026 18:02:48                                   64        
"""  # noqa: E501, W291 (qstat pads its lines: kept byte for byte)

QACCT = """\
==============================================================
qname        all.q               
hostname     node1               
jobname      t1                  
jobnumber    8                   
granted_pe   mpi                 
slots        6                   
failed       100 : assumedly after job
exit_status  137                  (Killed)
ru_wallclock 6s
==============================================================
qname        all.q               
jobname      t1                  
jobnumber    12                  
failed       0    
exit_status  0                   
"""  # noqa: W291


def test_parsers_on_captured_output():
    assert parse_qstat(QSTAT) == {"8": "r", "19": "dr", "9": "qw"}
    assert [job_alive(s) for s in ("r", "t", "Rr", "s", "S", "dr", "qw", "hqw", "Eqw", None)] \
        == [True, True, True, True, True, False, False, False, False, False]
    start, hosts = parse_hostfile("1795284167\nnode1 2 all.q@node1 UNDEFINED\n"
                                  "node3 2 all.q@node3 UNDEFINED\nnode1 1 b.q@node1 UNDEFINED\n")
    assert start == 1795284167 and hosts == [("node1", 3), ("node3", 2)]
    assert parse_hostfile("1795284167\n") == (1795284167, [])
    assert parse_qacct(QACCT) == {
        "8": "exit_status 137 (Killed), failed 100 : assumedly after job",
        "12": "exit_status 0"}


# -- the real test bed -------------------------------------------------------------------------

def test_exec_runs_on_the_granted_host_and_slot(testbed, tmp_path):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    start = time.monotonic()
    done = runaway("-v", "exec", sge_profile(testbed, tmp_path), script, cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    seen = parse(done.stdout)
    (job, node, slots), = GRANTED.findall(done.stderr)
    assert seen["host"] == seen["node"] == node and node in testbed.nodes
    # slots: cores = what Grid Engine granted on the host (all 4 of a free host)
    assert seen["handles"] == ",".join(str(i) for i in range(int(slots)))
    assert 1 <= int(slots) <= testbed.cpus and seen["handle"] in seen["handles"].split(",")
    assert elapsed < 30
    assert_nothing_left(testbed)


def test_two_nodes_spread_as_grid_engine_grants(testbed, tmp_path):
    """nodes: 2, slots: 2 asks `-pe mpi 4`; Grid Engine spreads the 4 slots round robin (over
    2 or 3 hosts), each host offers the slots granted on it, and 4 concurrent executions of
    1 s each get a (host, slot) pair each."""
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = load(sge_profile(testbed, tmp_path, slots=2, nodes=2))

    async def main():
        async with Engine(profile) as engine:
            results = await asyncio.gather(*[
                engine.submit(Execution(script, ["1"], output=tmp_path / f"o{i}"))
                for i in range(4)])
            return results, list(engine.allocator.live.values())

    results, live = run(main())
    assert all(r.ok for r in results), [r.message for r in results]
    (allocation,) = live
    assert allocation.slots == 4 and {n.name for n in allocation.nodes} <= set(testbed.nodes)
    pairs = set()
    for i in range(4):
        seen = parse((tmp_path / f"o{i}/stdout").read_text())
        assert seen["host"] == seen["node"]
        pairs.add((seen["node"], seen["handle"]))
    assert len(pairs) == 4  # 4 slots, 4 concurrent executions: each its own
    assert_nothing_left(testbed)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_no_job_and_no_process(testbed, tmp_path, sig):
    marker, _ = interrupt_mid_execution(testbed, tmp_path, sge_profile(testbed, tmp_path), sig,
                                        our_jobs)
    assert_nothing_left(testbed, marker)


def test_interrupt_while_the_request_waits_withdraws_it(testbed, tmp_path):
    """A holder job on hold (`-h`) waits forever; Ctrl-C must not leave it queued."""
    profile = sge_profile(testbed, tmp_path, options=["-h"])
    queued = interrupt_pending_request(testbed, tmp_path, profile, our_jobs)
    assert "hqw" in queued[0]
    assert_nothing_left(testbed)


def test_allocation_deleted_outside_is_noticed_and_replaced(testbed, tmp_path):
    profile = load(sge_profile(testbed, tmp_path, poll_interval="1s"))
    job, lost, noticed, again, live, seen, marker = cancel_from_outside(
        testbed, tmp_path, profile, "qdel")
    assert lost.state is State.LOST and f"allocation {job} ended" in lost.message
    assert "deleted" in lost.message or "exit_status" in lost.message or "gone" in lost.message
    assert noticed < 5  # poll_interval 1 s
    assert again.ok and live and live[0] != job
    granted = [e.allocation for e in seen if isinstance(e, events.AllocationGranted)]
    assert job in granted and live[0] in granted
    assert_nothing_left(testbed, marker)


@pytest.mark.parametrize("change, words", [
    ({"slots": 64}, "no suitable queues"),  # -pe smp 64: no host has 64 slots
    ({"pe": "nosuchpe"}, 'parallel environment "nosuchpe" does not exist'),
    ({"options": ["-q", "nosuch.q"]}, 'unknown queue "nosuch.q"'),
])
def test_refused_allocation_is_one_clear_error_within_seconds(testbed, tmp_path, change, words):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    slots = change.pop("slots", "cores")
    profile = sge_profile(testbed, tmp_path, slots=slots, **change)
    start = time.monotonic()
    done = runaway("exec", profile, script, cwd=tmp_path, timeout=60)
    assert time.monotonic() - start < 15
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sge on login" in lines[0] and "refused" in lines[0], lines
    assert words in lines[0]
    assert_nothing_left(testbed)


def test_repository_testbed_profile_runs(testbed, tmp_path):
    """profiles/testbed-sge.yml works by name from the repository root."""
    done = runaway("exec", "testbed-sge", "examples/hello.sh", "-o", tmp_path / "out", "--",
                   "bed", cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello bed from node")
    assert (tmp_path / "out/greeting.txt").read_text() == "bed\n"
    assert_nothing_left(testbed)
