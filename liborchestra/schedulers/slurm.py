"""Slurm: allocations from the login host over SSH.

`salloc --no-shell` (or, where sites forbid salloc, an `sbatch` holder job) asks for nodes;
`scontrol show job -d` says which nodes and how many CPUs on each. Every allocation of an
engine carries the same job name, so one `squeue` polls them all and a final `scancel --name`
sweeps anything that may be left (a request still pending when the engine was interrupted).
"""

from __future__ import annotations

import math
import re
import shlex
import uuid

import anyio

from liborchestra.schedulers.base import Allocation, Node, SrunReach
from liborchestra.schedulers.cluster import ClusterScheduler, last_lines

_JOB_ID = re.compile(r"job allocation (\d+)")
_ALIVE = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"}
_WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "RESIZING"}
HOLDER_POLL = 0.5


def cpu_count(cpu_ids: str) -> int:
    """Number of CPUs in a Slurm CPU_IDs list such as `0-3,6`."""
    total = 0
    for part in filter(None, cpu_ids.split(",")):
        low, _, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


def time_limit(text: str) -> float | None:
    """Seconds from a Slurm time such as `1-02:03:04`, `05:00`, or None for UNLIMITED."""
    if text in ("UNLIMITED", "INVALID", "NOT_SET", ""):
        return None
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return float(seconds + int(days or 0) * 86400)


class SlurmScheduler(ClusterScheduler):
    kind = "slurm"
    missing = "is Slurm installed on the login host, and on its PATH?"

    def __init__(self, profile, pool) -> None:
        super().__init__(profile, pool)
        self.name = f"orchestra-{uuid.uuid4().hex[:10]}"

    # -- commands ------------------------------------------------------------------------------

    def _request(self, walltime: float | None) -> list[str]:
        args = ["-J", self.name, "-N", str(self.spec.nodes)]
        if walltime:
            args += ["-t", str(max(1, math.ceil(walltime / 60)))]
        return args + list(self.spec.options)

    # -- allocations ---------------------------------------------------------------------------

    async def allocate(self, walltime: float | None = None) -> Allocation:
        return await self.tracked(self._allocate(walltime or self.spec.walltime))

    async def _allocate(self, walltime: float | None) -> Allocation:
        job = await (self._sbatch(walltime) if self.spec.submit == "sbatch"
                     else self._salloc(walltime))
        try:
            return await self._describe(job)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await self.shell.run(f"scancel {shlex.quote(job)}")
            raise

    async def _salloc(self, walltime: float | None) -> str:
        # `echo $$; exec salloc`: the remote salloc's pid comes first on stdout. A closed
        # channel does not stop a salloc without a terminal: interrupted, we stop it ourselves
        # (SIGINT makes it withdraw its request), or it would be granted later, unowned.
        command = "echo $$; exec " + shlex.join(["salloc", "--no-shell",
                                                 *self._request(walltime)])
        errors: list[bytes] = []
        job: list[str] = []
        pid: list[bytes] = []

        def stderr(chunk: bytes) -> None:
            errors.append(chunk)
            found = _JOB_ID.search(b"".join(errors).decode(errors="replace"))
            if found and not job:
                job.append(found.group(1))

        try:
            status = await self.shell.stream(command, pid.append, stderr)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                remote = b"".join(pid).split(b"\n", 1)[0].strip().decode(errors="replace")
                if remote.isdigit():  # interrupted while pending: withdraw the request
                    await self.shell.run(f"kill -INT {remote} 2>/dev/null; sleep 1; "
                                         f"kill -TERM {remote} 2>/dev/null; true")
                if job:
                    await self.shell.run(f"scancel {shlex.quote(job[0])}")
            raise
        text = b"".join(errors).decode(errors="replace")
        if status == 127:
            raise self.error(f"`salloc` not found ({self.missing})")
        if status != 0 or not job or "Granted job allocation" not in text:
            raise self.error(f"allocation refused: {last_lines(text)}")
        return job[0]

    async def _sbatch(self, walltime: float | None) -> str:
        command = shlex.join(["sbatch", "--parsable", *self._request(walltime),
                              "--wrap", "exec sleep 2147483647"])
        job = (await self.command(command, "sbatch")).strip().split(";")[0]
        if not job.isdigit():
            raise self.error(f"unexpected sbatch output {job!r}")
        while True:
            state = (await self.command(f"squeue -h -j {job} -o %T", "squeue")).strip()
            if state == "RUNNING":
                return job
            if state not in _WAITING:
                reason = await self._final_states([job])
                raise self.error(f"holder job {job} ended before it ran: "
                                 f"{reason.get(job) or state or 'gone'}")
            await anyio.sleep(HOLDER_POLL)

    async def _describe(self, job: str) -> Allocation:
        """Nodes, CPUs per node and time left of a granted job, in one round trip."""
        q = shlex.quote(job)
        out = await self.command(
            f"scontrol show job -d {q} | grep -o 'Nodes=[^ ]* CPU_IDs=[^ ]*' | "
            "while read -r n c; do for h in $(scontrol show hostnames \"${n#Nodes=}\"); do "
            "echo \"node $h ${c#CPU_IDs=}\"; done; done; "
            f"squeue -h -j {q} -o 'time %l %M'", "scontrol show job")
        nodes, limit, used = [], None, 0.0
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] == ["node"] and len(parts) == 3:
                nodes.append((parts[1], cpu_count(parts[2])))
            elif parts[:1] == ["time"] and len(parts) == 3:
                limit, used = time_limit(parts[1]), time_limit(parts[2]) or 0.0
        if not nodes:
            raise self.error(f"job {job} has no nodes (scontrol said: {last_lines(out)})")
        srun = job if self.profile.reach == "srun" else None
        return self.allocation(job, nodes, limit, used, fixed=True, srun_job=srun)

    def reach(self, name: str, allocation: str | None = None) -> Node:
        """With `reach: srun`, a node is reached by a step of the job the run was placed in
        (the site may forbid SSH to nodes); without that job, by SSH as usual."""
        if self.profile.reach != "srun" or allocation is None:
            return super().reach(name, allocation)
        filesystem = "cluster" if self.profile.shared_filesystem else name
        return Node(name=name, endpoint=None, filesystem=filesystem, handles=(),
                    srun=SrunReach(self._login, allocation))

    async def poll(self, allocations: list[Allocation]) -> dict[str, str]:
        out = await self.command(f"squeue -h -u \"$USER\" -n {shlex.quote(self.name)} -o '%i %T'",
                              "squeue")
        listed = dict(parts for parts in map(str.split, out.splitlines()) if len(parts) == 2)
        ended = [a.id for a in allocations if listed.get(a.id) not in _ALIVE]
        # one squeue still lists (requeued, pending again) may start later: held for the sweep
        self._held.difference_update(job for job in ended if job not in listed)
        if not ended:
            return {}
        states = await self._final_states(ended)
        return {job: states.get(job) or "ended" for job in ended}

    async def _final_states(self, jobs: list[str]) -> dict[str, str]:
        """Final states from sacct (best effort: accounting may be off or lag)."""
        done = await self.shell.run(
            f"sacct -n -X -P -o JobID,State -j {shlex.quote(','.join(jobs))}")
        states = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            job, _, state = line.partition("|")
            if job in jobs and state:
                states[job] = state.strip()
        return states

    async def release(self, allocation: Allocation) -> None:
        await self.release_with(allocation, f"scancel {shlex.quote(allocation.id)}")

    async def aclose(self) -> None:
        if self.may_leave():
            await self.sweep(self.name)

    async def sweep(self, name: str) -> None:
        await self.shell.run(f"scancel -u \"$USER\" -n {shlex.quote(name)}")

