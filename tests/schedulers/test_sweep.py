"""The sweep by job name, on the bed's Slurm, Grid Engine and PBS: run as an engine ends only
when a job may be left, and, on resume, rid the cluster of what an earlier engine left
queued under its name."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest

from liborchestra import Engine, Execution, State
from liborchestra.errors import SchedulerError
from liborchestra.schedulers.pbs import PBSScheduler, parse_qstat_full
from liborchestra.schedulers.sge import SGEScheduler
from liborchestra.schedulers.slurm import SlurmScheduler
from tests.helpers import load, slurm_profile, write_script
from tests.schedulers.scenarios import cancel_from_outside, run
from tests.schedulers.test_pbs import pbs_profile
from tests.schedulers.test_sge import sge_profile

SCHEDULERS = {"slurm": SlurmScheduler, "sge": SGEScheduler, "pbs": PBSScheduler}
REFUSED = {  # a request each refuses at once
    "slurm": {"options": ["--nodes=5"]},  # the bed has 3 nodes
    "sge": {"options": ["-q", "nosuch.q"]},
    "pbs": {"nodes": 5},
}


def _profile(testbed, tmp, kind: str, **scheduler):
    make = {"slurm": slurm_profile, "sge": sge_profile, "pbs": pbs_profile}[kind]
    return load(make(testbed, tmp, **scheduler))


def _jobs(testbed, kind: str, name: str) -> list[str]:
    """Ids of the user's live jobs named `name` (on SGE, the name: qdel takes it too)."""
    command = {
        "slurm": f"squeue -h -u $USER -n {name} -o %i",
        "sge": f"qstat -j {name} >/dev/null 2>&1 && echo {name} || true",  # by full name
        "pbs": f"PATH={testbed.pbs_bin}:$PATH qstat -f",  # full names: -u may cut them
    }[kind]
    out = testbed.ssh("login", command, check=True).stdout
    if kind == "pbs":
        return [job for job, attributes in parse_qstat_full(out).items()
                if attributes.get("Job_Name") == name and attributes.get("job_state") != "C"]
    return out.split()


def _gone(testbed, kind: str, name: str, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while _jobs(testbed, kind, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def _files(testbed, profile, kind: str) -> list[str]:
    """What the engine left in its scheduler folder on the login host (holder and host
    files); Slurm keeps none there."""
    return testbed.ssh("login", f"ls -A {profile.directory}/{kind} 2>/dev/null || true",
                       check=True).stdout.split()


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_the_final_sweep_runs_only_when_a_job_may_be_left(testbed, tmp_path, monkeypatch,
                                                          kind):
    """Granted and released cleanly: nothing to sweep, nothing left. Refused: swept (a
    request that did not end as asked may have left a job), nothing left."""
    cls = SCHEDULERS[kind]
    swept: list[str] = []
    sweep = cls.sweep

    async def spy(self, name, *args, **kwargs):
        swept.append(name)
        await sweep(self, name, *args, **kwargs)

    monkeypatch.setattr(cls, "sweep", spy)
    script = write_script(tmp_path / "code", "noop.sh", "true\n")

    async def main(profile):
        async with Engine(profile) as engine:
            return await engine.submit(Execution(script, output=tmp_path / "o"))

    granted = _profile(testbed, tmp_path / "granted", kind)
    assert run(main(granted)).ok
    assert swept == []
    assert _files(testbed, granted, kind) == []
    refused = _profile(testbed, tmp_path / "refused", kind, **REFUSED[kind])
    assert not run(main(refused)).ok
    assert len(swept) == 1 and swept[0].startswith(("orchestra-", "orch-"))
    assert _gone(testbed, kind, swept[0])
    assert _files(testbed, refused, kind) == []


def _submit_held(testbed, kind: str, name: str) -> None:
    """A job held in the queue under `name`, as an engine's request left there."""
    testbed.ssh("login", {
        "slurm": f"sbatch -H -J {name} -o /dev/null --wrap 'sleep 600'",
        "sge": f"echo 'sleep 600' | qsub -h -N {name} -S /bin/bash -o /dev/null -j y",
        "pbs": f"cd /tmp && printf '#!/bin/bash\\nsleep 600\\n' > {name}.sh && "
               f"PATH={testbed.pbs_bin}:$PATH qsub -h -N {name} -o /dev/null -e /dev/null "
               f"{name}.sh; rm -f {name}.sh",
    }[kind], check=True)


async def _sweep_stale(profile, name: str) -> None:
    async with Engine(profile) as engine:
        await engine.sweep_stale(name)


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_a_sweep_by_name_removes_an_earlier_engines_queued_job(testbed, tmp_path, kind):
    """What a resume does for a driver killed while its request waited, before it learnt the
    job's id: the job, held in the queue under the engine's name, goes."""
    name = ("orch-" if kind == "pbs" else "orchestra-") + uuid.uuid4().hex[:10]
    profile = _profile(testbed, tmp_path, kind)
    _submit_held(testbed, kind, name)
    try:
        assert _jobs(testbed, kind, name), "the held job is not in the queue"
        run(_sweep_stale(profile, name))
        assert _gone(testbed, kind, name)
    finally:  # what the sweep missed
        left = " ".join(_jobs(testbed, kind, name))
        if left:
            cancel = {"slurm": "scancel", "sge": "qdel",
                      "pbs": f"PATH={testbed.pbs_bin}:$PATH qdel"}[kind]
            testbed.ssh("login", f"{cancel} {left}")


def test_a_pbs_sweep_looks_up_a_name_qstat_u_cuts_short(testbed, tmp_path):
    """`qstat -u` cuts a long name to its column (PBS Pro at 10 characters, the bed's
    wrappers at 20): the sweep deletes the job whose full name, in `qstat -f`, is the one
    swept, and leaves one whose name only starts the same."""
    stem = "orch-" + uuid.uuid4().hex[:15]  # what the wrappers show of both
    name, twin = stem + "aaaa", stem + "bbbb"
    for each in (name, twin):
        _submit_held(testbed, "pbs", each)
    try:
        assert _jobs(testbed, "pbs", name) and _jobs(testbed, "pbs", twin)
        run(_sweep_stale(_profile(testbed, tmp_path, "pbs"), name))
        assert _gone(testbed, "pbs", name), f"{name} is still queued"
        assert _jobs(testbed, "pbs", twin), "the sweep deleted a job of another name"
    finally:
        left = _jobs(testbed, "pbs", name) + _jobs(testbed, "pbs", twin)
        if left:
            testbed.ssh("login", f"PATH={testbed.pbs_bin}:$PATH qdel {' '.join(left)}")


def test_a_slurm_job_requeued_from_outside_is_swept_as_the_engine_ends(testbed, tmp_path):
    """Requeued and held (as after a node failure, where Slurm requeues): the engine gives the
    allocation up, but squeue still lists the job, which would start again and hold nodes
    with nobody to use them. The final sweep cancels it."""
    profile = _profile(testbed, tmp_path, "slurm", submit="sbatch", poll_interval="1s")
    job, lost, *_ = cancel_from_outside(testbed, tmp_path, profile, "scontrol requeuehold")
    assert lost.state is State.LOST and f"allocation {job} ended" in lost.message
    deadline = time.monotonic() + 15
    while state := testbed.ssh("login", f"squeue -h -j {job} -o %T").stdout.strip():
        assert time.monotonic() < deadline, f"job {job} left {state}"
        time.sleep(0.25)


@pytest.mark.parametrize("kind", ["sge", "pbs"])
def test_a_request_interrupted_stays_interrupted_when_withdrawing_it_fails(testbed, tmp_path,
                                                                           monkeypatch, kind):
    """The holder job waits in the queue (held); the request is interrupted, and withdrawing
    the job fails (its qdel missing, say): the interruption is still what ends the request,
    not that error, and the engine's final sweep removes the job."""
    cls = SCHEDULERS[kind]

    async def failing(self, allocation):
        raise SchedulerError(f"{kind} on login: `qdel` not found")

    monkeypatch.setattr(cls, "release", failing)
    profile = _profile(testbed, tmp_path, kind, options=["-h"])

    async def main():
        async with Engine(profile) as engine:
            with anyio.move_on_after(3) as scope:
                await engine.scheduler.allocate()
            return engine.scheduler.name, scope.cancelled_caught

    name, interrupted = run(main())
    assert interrupted
    assert _gone(testbed, kind, name)
