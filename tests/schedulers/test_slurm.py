"""Slurm on the real test bed: allocations, the reach modes, elasticity, walltime, no orphans."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import anyio
import pytest

from liborchestra import Engine, Execution, State, events
from tests.helpers import load, slurm_profile, write_script
from tests.schedulers.scenarios import (
    cancel_from_outside,
    interrupt_mid_execution,
    our_processes,
    parse,
    run,
    slurm_jobs_left,
)

ENV_SCRIPT = """\
#!/usr/bin/env bash
echo "host=$(hostname) node=$RUNAWAY_NODE_ID handle=$RUNAWAY_HANDLE_ID \
handles=${RUNAWAY_HANDLES// /,} nodes=${RUNAWAY_NODES// /,} gpu=${CUDA_VISIBLE_DEVICES:-none}"
sleep "${1:-0}"
"""


def our_jobs(testbed) -> list[str]:
    out = testbed.ssh("login", "squeue -h -u $USER -o '%i %j %T'", check=True).stdout
    return [line for line in out.splitlines() if "orchestra-" in line]


def nothing_left(testbed) -> list[str]:
    """Our jobs once Slurm has finished cleaning up the cancelled ones."""
    return [job for job in slurm_jobs_left(testbed) if "orchestra-" in job]




@pytest.mark.parametrize("reach", ["ssh", "srun"])
def test_exec_runs_on_a_real_node_and_slot(testbed, tmp_path, reach):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = slurm_profile(testbed, tmp_path, reach=reach, nodes=2)
    done = subprocess.run([sys.executable, "-m", "runaway", "exec", str(profile), str(script)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = parse(done.stdout)
    assert seen["host"] == seen["node"] and seen["node"] in testbed.nodes
    assert seen["handles"] == "0,1,2,3"  # 4 CPUs per node, --exclusive
    assert seen["handle"] in seen["handles"].split(",")
    nodes = seen["nodes"].split(",")
    assert len(nodes) == 2 and seen["node"] in nodes
    assert nothing_left(testbed) == []


@pytest.mark.parametrize("reach, via_login", [("ssh", True), ("direct", False)])
def test_reach_direct_connects_to_the_nodes_without_the_login_host(testbed, tmp_path, reach,
                                                                    via_login):
    """The node's sshd says who connected: the login host (reach: ssh) or this machine."""
    script = write_script(tmp_path / "code", "who.sh", """\
        #!/usr/bin/env bash
        echo "client=${SSH_CONNECTION%% *} node=$RUNAWAY_NODE_ID"
        """)
    profile = slurm_profile(testbed, tmp_path, reach=reach, nodes=2)
    done = subprocess.run([sys.executable, "-m", "runaway", "exec", str(profile), str(script)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = parse(done.stdout)
    assert seen["node"] in testbed.nodes
    assert (seen["client"] == testbed.hosts["login"]) is via_login, seen
    assert nothing_left(testbed) == []


def test_nodes_and_handles_are_the_granted_ones(testbed, tmp_path):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = load(slurm_profile(testbed, tmp_path, nodes=2))

    async def main():
        async with Engine(profile) as engine:
            results = await asyncio.gather(*[
                engine.submit(Execution(script, ["1"], output=tmp_path / f"o{i}"))
                for i in range(8)])
            return results, list(engine.allocator.live.values())

    results, live = run(main())
    assert all(r.ok for r in results)
    pairs = set()
    for i in range(8):
        seen = parse((tmp_path / f"o{i}/stdout").read_text())
        assert seen["host"] == seen["node"]
        assert seen["handles"] == "0,1,2,3"  # 4 CPUs per node
        pairs.add((seen["node"], seen["handle"]))
    assert len(pairs) == 8  # 8 slots, 8 concurrent executions: each its own


@pytest.mark.parametrize("reach, sig", [("ssh", signal.SIGINT), ("srun", signal.SIGTERM),
                                        ("ssh", signal.SIGTERM)])
def test_interrupt_leaves_no_job_and_no_process(testbed, tmp_path, reach, sig):
    profile = slurm_profile(testbed, tmp_path, reach=reach)
    marker, _ = interrupt_mid_execution(testbed, tmp_path, profile, sig, our_jobs)
    assert our_processes(testbed, marker) == []
    assert nothing_left(testbed) == []


def test_allocation_cancelled_outside_is_noticed_and_replaced(testbed, tmp_path):
    profile = load(slurm_profile(testbed, tmp_path, poll_interval="1s"))
    job, lost, noticed, again, live, _, marker = cancel_from_outside(
        testbed, tmp_path, profile, "scancel")
    assert lost.state is State.LOST and f"allocation {job} ended" in lost.message
    assert "CANCELLED" in lost.message
    assert noticed < 10
    assert again.ok and live and live[0] != job
    assert our_processes(testbed, marker) == []  # started over SSH: the engine killed it
    assert nothing_left(testbed) == []


def test_work_waits_for_an_allocation_long_enough(testbed, tmp_path):
    """Walltime 1 minute, executions declaring 2 minutes: they get a fitting allocation."""
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = load(slurm_profile(testbed, tmp_path, walltime="1m", max_allocations=2))
    granted: list[events.AllocationGranted] = []

    def listen(event):
        if isinstance(event, events.AllocationGranted):
            granted.append((event, anyio.current_time()))

    async def main():
        async with Engine(profile, listeners=[listen]) as engine:
            short = await engine.submit(Execution(script))
            long = await asyncio.gather(*[engine.submit(Execution(script, duration=120))
                                          for _ in range(2)])
            return short, long

    short, long = run(main())
    assert short.ok and all(r.ok for r in long)
    lengths = {g.allocation: g.ends_at - t for g, t in granted}
    assert min(lengths.values()) < 61  # the profile's 1-minute allocation
    fitting = [a for a, left in lengths.items() if left >= 150]
    assert fitting, lengths
    placed = {r.node for r in long}
    assert placed and nothing_left(testbed) == []


def test_elastic_growth_and_idle_give_back(testbed, tmp_path):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = load(slurm_profile(testbed, tmp_path, max_allocations=3, idle_timeout="2s",
                                 poll_interval="1s"))
    seen: list[events.Event] = []

    async def main():
        async with Engine(profile, listeners=[seen.append]) as engine:
            results = await asyncio.gather(*[engine.submit(Execution(script, ["2"]))
                                             for _ in range(12)])
            await anyio.sleep(4)
            return results, len(engine.allocator.live)

    results, live_after_idle = run(main())
    assert all(r.ok for r in results)
    granted = [e for e in seen if isinstance(e, events.AllocationGranted)]
    assert 2 <= len(granted) <= 3  # one node of 4 slots each; 12 executions wait
    assert len({r.node for r in results}) >= 2
    idle = [e for e in seen if isinstance(e, events.AllocationReleased) and e.reason == "idle"]
    assert idle and live_after_idle == 0
    assert nothing_left(testbed) == []


@pytest.mark.parametrize("option, words", [
    ("--partition=nosuchpartition", "invalid partition"),
    ("--nodes=5", "Node count specification invalid"),
    ("--time=2-00:00:00 --partition=short", "time limit"),
])
def test_refused_allocation_is_one_clear_error_within_seconds(testbed, tmp_path, option, words):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = slurm_profile(testbed, tmp_path, options=option.split())
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runaway", "exec", str(profile), str(script)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 15
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert words.lower() in done.stderr.lower(), done.stderr
    assert "allocation refused" in done.stderr
    assert nothing_left(testbed) == []


def test_gpu_slots_get_their_own_device(testbed, tmp_path):
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile_path = slurm_profile(testbed, tmp_path, gpus=2)
    text = profile_path.read_text().replace("directory:", "slots: gpus\ndirectory:")
    profile_path.write_text(text)
    profile = load(profile_path)

    async def main():
        async with Engine(profile) as engine:
            return await asyncio.gather(*[
                engine.submit(Execution(script, ["1"], output=tmp_path / f"o{i}"))
                for i in range(2)])

    results = run(main())
    assert all(r.ok for r in results)
    gpus = [parse((tmp_path / f"o{i}/stdout").read_text())["gpu"] for i in range(2)]
    assert sorted(gpus) == ["0", "1"]


@pytest.mark.parametrize("name", ["testbed-slurm", "testbed-srun"])
def test_repository_testbed_profiles_run(testbed, tmp_path, name):
    """The profiles shipped in profiles/ work by name from the repository root."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "runaway", "exec", name, "examples/hello.sh",
                           "-o", str(tmp_path / "out"), "--", "bed"],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello bed from node")
    assert (tmp_path / "out/greeting.txt").read_text() == "bed\n"
    assert nothing_left(testbed) == []


def test_expiring_allocation_is_replaced_before_it_ends(testbed, tmp_path):
    """Walltime 1 minute and 45 s of work: a replacement is granted while the first still
    runs (beyond max_allocations), so the work never waits for the first to expire."""
    script = write_script(tmp_path / "code", "env.sh", ENV_SCRIPT)
    profile = load(slurm_profile(testbed, tmp_path, walltime="1m", max_allocations=1,
                                 poll_interval="1s", idle_timeout="2s"))
    seen: list[events.Event] = []

    async def main():
        async with Engine(profile, listeners=[seen.append]) as engine:
            start = anyio.current_time()
            results = await asyncio.gather(*[engine.submit(Execution(script, ["3"]))
                                             for _ in range(60)])
            return results, anyio.current_time() - start

    results, elapsed = run(main())
    assert [r.state for r in results] == [State.COMPLETED] * 60
    granted = [e for e in seen if isinstance(e, events.AllocationGranted)]
    assert len(granted) >= 2
    assert elapsed < 58  # 60 x 3 s on 4 slots = 45 s of work, and no wait for an expiry
    assert nothing_left(testbed) == []
