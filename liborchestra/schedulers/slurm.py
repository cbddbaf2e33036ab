"""Slurm: allocations from the login host over SSH.

`salloc --no-shell` (or, where sites forbid salloc, an `sbatch` holder job) asks for nodes;
`scontrol show job -d` says which nodes and how many CPUs on each. Every allocation of an
engine carries the same job name, so one `squeue` polls them all and a final `scancel --name`
sweeps anything left (a request still pending when the engine was interrupted).
"""

from __future__ import annotations

import math
import re
import shlex
import uuid

import anyio

from liborchestra.errors import SchedulerError
from liborchestra.schedulers.base import Allocation, Node, Scheduler, SrunReach, slot_handles
from liborchestra.shell import SSHShell

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


class SlurmScheduler(Scheduler):
    kind = "slurm"

    def __init__(self, profile, pool) -> None:
        super().__init__(profile, pool)
        self.spec = profile.scheduler
        self.name = f"orchestra-{uuid.uuid4().hex[:10]}"
        self._login = self.login()
        self.shell = SSHShell(pool.host(self._login), self._login.host)
        self.max_allocations = self.spec.max_allocations

    # -- commands ------------------------------------------------------------------------------

    async def _run(self, command: str, what: str) -> str:
        done = await self.shell.run(command)
        out = done.stdout.decode(errors="replace")
        if done.returncode == 127:
            raise SchedulerError(f"slurm on {self._login.host}: `{what}` not found "
                                 "(is Slurm installed on the login host, and on its PATH?)")
        if done.returncode != 0:
            message = _last_lines(done.stderr.decode(errors="replace") or out)
            raise SchedulerError(f"slurm on {self._login.host}: {what} failed: {message}")
        return out

    def _request(self, walltime: float | None) -> list[str]:
        args = ["-J", self.name, "-N", str(self.spec.nodes)]
        if walltime:
            args += ["-t", str(max(1, math.ceil(walltime / 60)))]
        return args + list(self.spec.options)

    # -- allocations ---------------------------------------------------------------------------

    async def allocate(self, walltime: float | None = None) -> Allocation:
        walltime = walltime or self.spec.walltime
        job = await (self._sbatch(walltime) if self.spec.submit == "sbatch"
                     else self._salloc(walltime))
        try:
            return await self._describe(job)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await self.shell.run(f"scancel {shlex.quote(job)}")
            raise

    async def _salloc(self, walltime: float | None) -> str:
        command = shlex.join(["salloc", "--no-shell", *self._request(walltime)])
        errors: list[bytes] = []
        job: list[str] = []

        def stderr(chunk: bytes) -> None:
            errors.append(chunk)
            found = _JOB_ID.search(b"".join(errors).decode(errors="replace"))
            if found and not job:
                job.append(found.group(1))

        try:
            status = await self.shell.stream(command, lambda _: None, stderr)
        except BaseException:
            if job:  # interrupted while pending: withdraw the request
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    await self.shell.run(f"scancel {shlex.quote(job[0])}")
            raise
        text = b"".join(errors).decode(errors="replace")
        if status == 127:
            raise SchedulerError(f"slurm on {self._login.host}: `salloc` not found")
        if status != 0 or not job or "Granted job allocation" not in text:
            raise SchedulerError(f"slurm on {self._login.host}: allocation refused: "
                                 f"{_last_lines(text)}")
        return job[0]

    async def _sbatch(self, walltime: float | None) -> str:
        command = shlex.join(["sbatch", "--parsable", *self._request(walltime),
                              "--wrap", "exec sleep 2147483647"])
        job = (await self._run(command, "sbatch")).strip().split(";")[0]
        if not job.isdigit():
            raise SchedulerError(f"slurm on {self._login.host}: unexpected sbatch output {job!r}")
        while True:
            state = (await self._run(f"squeue -h -j {job} -o %T", "squeue")).strip()
            if state == "RUNNING":
                return job
            if state not in _WAITING:
                reason = await self._final_states([job])
                raise SchedulerError(f"slurm on {self._login.host}: holder job {job} ended "
                                     f"before it ran: {reason.get(job) or state or 'gone'}")
            await anyio.sleep(HOLDER_POLL)

    async def _describe(self, job: str) -> Allocation:
        """Nodes, CPUs per node and time left of a granted job, in one round trip."""
        q = shlex.quote(job)
        out = await self._run(
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
            raise SchedulerError(f"slurm on {self._login.host}: job {job} has no nodes "
                                 f"(scontrol said: {_last_lines(out)})")
        now = anyio.current_time()
        return Allocation(
            id=job, nodes=tuple(self._node(job, name, cpus) for name, cpus in nodes),
            ends_at=None if limit is None else now + limit - used, duration=limit)

    def _node(self, job: str, name: str, cpus: int) -> Node:
        profile = self.profile
        filesystem = "cluster" if profile.shared_filesystem else name
        handles = slot_handles(profile.slots, cpus, self.spec.gpus)
        gpus = profile.slots == "gpus"
        if profile.reach == "srun":
            return Node(name=name, endpoint=None, filesystem=filesystem, handles=handles,
                        srun=SrunReach(self._login, job), gpus=gpus)
        return Node(name=name, endpoint=self.endpoint(name, jump=self._login),
                    filesystem=filesystem, handles=handles, gpus=gpus)

    async def poll(self, allocations: list[Allocation]) -> dict[str, str]:
        out = await self._run(f"squeue -h -u \"$USER\" -n {shlex.quote(self.name)} -o '%i %T'",
                              "squeue")
        alive = {parts[0] for parts in map(str.split, out.splitlines())
                 if len(parts) == 2 and parts[1] in _ALIVE}
        ended = [a.id for a in allocations if a.id not in alive]
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
        await self.shell.run(f"scancel {shlex.quote(allocation.id)}")

    async def aclose(self) -> None:
        await self.shell.run(f"scancel -u \"$USER\" -n {shlex.quote(self.name)}")


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-n:]) or "(no message)"
