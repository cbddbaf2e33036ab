"""Scenarios every cluster scheduler must pass, written once and run against each of them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio

from liborchestra import Engine, Execution, events
from liborchestra.profile import Profile
from tests.helpers import write_script


def runaway(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runaway", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def run(coro):
    return anyio.run(lambda: coro, backend="asyncio")


def parse(stdout: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in stdout.split())


def our_processes(testbed, *markers: str) -> list[str]:
    return [p for node in testbed.nodes for p in testbed.procs(node)
            if any(marker in p for marker in markers)]


def interrupt_mid_execution(testbed, tmp: Path, profile: Path, sig: int, our_jobs,
                            processes: int = 2) -> tuple[str, subprocess.Popen]:
    """Start `runaway exec` of a script that leaves `processes` sleepers on a node, wait until
    they run, send `sig`; returns the sleepers' marker and the finished process."""
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    sleepers = "\n".join([f"bash -c 'exec -a {marker} sleep 300' &"] * (processes - 1)
                         + [f"bash -c 'exec -a {marker} sleep 300'"])
    script = write_script(tmp / "code", "slow.sh", f"echo started\n{sleepers}\n")
    proc = subprocess.Popen([sys.executable, "-m", "runaway", "exec", str(profile), str(script)],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "started\n"
        deadline = time.monotonic() + 20
        while len(our_processes(testbed, marker)) < processes:
            assert time.monotonic() < deadline, "the script never showed on a node"
            time.sleep(0.1)
        assert our_jobs(testbed)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in proc.stderr.read()
    return marker, proc


def cancel_from_outside(testbed, tmp: Path, profile: Profile, cancel: str):
    """Run a long execution, cancel its allocation with `cancel` (a command taking the job
    id, run on login as the user); returns (job, lost result, seconds until noticed,
    a later result, live allocations, events, marker)."""
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    slow = write_script(tmp / "code", "slow.sh", f"exec -a {marker} sleep 120\n")
    quick = write_script(tmp / "code", "quick.sh", "hostname\n")
    seen: list[events.Event] = []

    async def main():
        async with Engine(profile, listeners=[seen.append]) as engine:
            future = engine.submit(Execution(slow))
            while not our_processes(testbed, marker):
                await anyio.sleep(0.2)
            (job,) = list(engine.allocator.live)
            cancelled = time.monotonic()
            testbed.ssh("login", f"{cancel} {job}", check=True)
            lost = await future
            noticed = time.monotonic() - cancelled
            again = await engine.submit(Execution(quick))
            return job, lost, noticed, again, list(engine.allocator.live)

    return (*run(main()), seen, marker)


def interrupt_pending_request(testbed, tmp: Path, profile: Path, our_jobs) -> list:
    """`runaway exec` on a profile whose request waits (a held job); Ctrl-C once it shows in
    the queue. Returns the queue lines seen before the interrupt."""
    script = write_script(tmp / "code", "noop.sh", "true\n")
    proc = subprocess.Popen([sys.executable, "-m", "runaway", "exec", str(profile), str(script)],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (queued := our_jobs(testbed)):
            assert time.monotonic() < deadline, "the request never showed in the queue"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in proc.stderr.read()
    return queued


def slurm_jobs_left(testbed, within: float = 60.0) -> list[str]:
    """The user's Slurm jobs still in squeue (`id name state`). A cancelled job stays
    COMPLETING a moment while slurmd cleans up: wait for those (only those) to leave."""
    deadline = time.monotonic() + within
    while True:
        out = testbed.ssh("login", "squeue -h -u $USER -o '%i %j %T'", check=True).stdout
        jobs = out.split("\n") if out.strip() else []
        jobs = [job for job in jobs if job.strip()]
        if not jobs or any("COMPLETING" not in job for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)
