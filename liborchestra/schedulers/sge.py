"""Grid Engine (Son of Grid Engine, and its kin): allocations as holder jobs on the login host.

An allocation is a job submitted with `qsub` over SSH. Its script, sent on stdin, copies
`$PE_HOSTFILE` (one line per host: name and granted slots) to a file in the profile's remote
directory, which the login host shares with the nodes, then sleeps until the walltime. The
scheduler waits until that file appears and reaches the hosts it names with SSH through the
login host. Every job of an engine carries the same name, so one `qstat` polls them all and a
final `qdel <name>` sweeps anything that may be left (a request still pending when the engine
stopped).

Grid Engine grants slots, not nodes. A request is `-pe <pe> <count>`: `pe` from the profile,
else `smp` for one node and `mpi` for more (the test bed's names; sites name theirs). The count
is nodes x slots for `slots: N` (nodes x gpus for `slots: gpus`); for `slots: cores` it is the
range nodes-(nodes x SLOT_RANGE), and Grid Engine grants as many slots as are free in it.
Grid Engine also decides how the slots spread over hosts: each host offers the slots granted
on it (`slots: gpus`: the declared GPUs of each host).
Requests are verified at submission (`-w e`), so one that can never run (an unknown PE, queue
or resource, more slots than any host has) is refused at once with qsub's own message.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import uuid

from liborchestra.schedulers.base import Allocation
from liborchestra.schedulers.cluster import RUNNING, ClusterScheduler, last_lines
from liborchestra.transfer import remote_path

SLOT_RANGE = 64  # `slots: cores`: at most this many slots per requested node
FOREVER = 2147483647  # seconds the holder sleeps without a walltime


def job_alive(state: str | None) -> bool:
    """Whether a `qstat` state is a running (or suspended) job: r, t, Rr, s, S, T...; not
    pending (qw, hqw, Rq), in error (Eqw) or being deleted (dr, dt)."""
    return bool(state) and not any(flag in state for flag in "dEqw")


def parse_qstat(text: str) -> dict[str, str]:
    """Job id -> state from plain `qstat` output (job-ID prior name user state ...)."""
    states = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].isdigit():
            states[parts[0]] = parts[4]
    return states


def parse_hostfile(text: str) -> tuple[float | None, list[tuple[str, int]]]:
    """The holder's file: its start time (epoch), then `$PE_HOSTFILE` lines (host slots queue
    processors). A host listed twice (two queues) has its slots added."""
    lines = text.strip().splitlines()
    start = float(lines[0]) if lines and re.fullmatch(r"\d+", lines[0].strip()) else None
    hosts: dict[str, int] = {}
    for line in lines[1:] if start is not None else lines:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            hosts[parts[0]] = hosts.get(parts[0], 0) + int(parts[1])
    return start, list(hosts.items())


def parse_qacct(text: str) -> dict[str, str]:
    """Job id -> `exit_status N[, failed ...]` from `qacct -j` records."""
    reasons, record = {}, {}
    for line in [*text.splitlines(), "===="]:
        if line.startswith("===="):
            if record.get("jobnumber"):
                reason = f"exit_status {record.get('exit_status', '?')}"
                if record.get("failed", "0").split()[0] != "0":
                    reason += f", failed {record['failed']}"
                reasons[record["jobnumber"]] = reason
            record = {}
            continue
        key, _, value = line.partition(" ")
        record[key] = " ".join(value.split())
    return reasons


class SGEScheduler(ClusterScheduler):
    kind = "sge"
    missing = "is Grid Engine's client installed on the login host, and on its PATH?"

    def __init__(self, profile, pool) -> None:
        super().__init__(profile, pool)
        self.name = f"orchestra-{uuid.uuid4().hex[:10]}"
        self.folder = f"{remote_path(profile.directory)}/sge"  # a shell word
        self._seq = itertools.count()
        self._files: dict[str, str] = {}  # job id -> its files' prefix (a shell word)

    # -- commands ------------------------------------------------------------------------------

    def request(self, walltime: float | None) -> list[str]:
        """qsub arguments of one allocation (without the output options)."""
        nodes, slots = self.spec.nodes, self.profile.slots
        pe = self.spec.pe or ("mpi" if nodes > 1 else "smp")
        if isinstance(slots, int):
            count = str(nodes * slots)
        elif slots == "gpus":
            count = str(nodes * (self.spec.gpus or 1))
        else:
            count = f"{nodes}-{nodes * SLOT_RANGE}"
        args = ["-N", self.name, "-pe", pe, count]
        if walltime:
            args += ["-l", f"h_rt={math.ceil(walltime)}"]
        return args + list(self.spec.options)

    def holder(self, prefix: str, walltime: float | None) -> str:
        """The job script: host file (start time, then $PE_HOSTFILE) written atomically."""
        sleep = math.ceil(walltime) + 60 if walltime else FOREVER
        return "\n".join([
            "#!/bin/bash",
            f"f={prefix}.hosts",
            '{ date +%s; cat "$PE_HOSTFILE"; } > "$f.tmp" && mv -f "$f.tmp" "$f" || exit 1',
            f"exec -a {shlex.quote(self.name + '-holder')} sleep {sleep}",
        ]) + "\n"

    # -- allocations ---------------------------------------------------------------------------

    async def allocate(self, walltime: float | None = None) -> Allocation:
        return await self.tracked(self._submit(walltime or self.spec.walltime))

    async def _submit(self, walltime: float | None) -> Allocation:
        prefix = f"{self.folder}/{self.name}.{next(self._seq)}"
        request = self.request(walltime)
        command = (f"mkdir -p {self.folder} && qsub -terse -w e -S /bin/bash -o /dev/null -j y "
                   + shlex.join(request))
        done = await self.run(command, self.holder(prefix, walltime).encode())
        out, err = (done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))
        job = out.split()[0].split(".")[0] if out.split() else ""
        if done.returncode != 0 or not job.isdigit():
            raise self.error(f"`qsub {shlex.join(request[2:])}` refused: "
                             f"{last_lines(err or out)}")
        self._files[job] = prefix
        return await self.hold(job, prefix, walltime, self._probe)

    async def _probe(self, job: str, prefix: str):
        """Host file, login clock and qstat in one round trip."""
        out = await self.command(f"cat {prefix}.hosts 2>/dev/null; echo \"#now $(date +%s)\"; "
                                 "qstat -u \"$USER\"", "qstat")
        head, _, tail = out.partition("#now ")
        now_text, _, qstat = tail.partition("\n")
        start, hosts = parse_hostfile(head)
        state = parse_qstat(qstat).get(job)
        if start is not None and hosts:
            status = RUNNING
        elif state is None or "d" in state:
            status = (await self._final_states([job])).get(job) or _gone(state)
        elif "E" in state:
            raise self.error(f"holder job {job} is in error state {state}: "
                             f"{await self._error_reason(job)}")
        else:
            status = RUNNING if job_alive(state) else None
        return start, hosts, float(now_text), status

    async def _error_reason(self, job: str) -> str:
        done = await self.shell.run(f"qstat -j {shlex.quote(job)}")
        lines = [line.split(":", 1)[-1].strip()
                 for line in done.stdout.decode(errors="replace").splitlines()
                 if line.startswith("error reason")]
        return " / ".join(lines) or "(qstat -j gives no reason)"

    async def poll(self, allocations: list[Allocation]) -> dict[str, str]:
        states = parse_qstat(await self.command("qstat -u \"$USER\"", "qstat"))
        ended = [a.id for a in allocations if not job_alive(states.get(a.id))]
        if not ended:
            return {}
        reasons = await self._final_states(ended)
        return {job: reasons.get(job) or _gone(states.get(job)) for job in ended}

    async def _final_states(self, jobs: list[str]) -> dict[str, str]:
        """Exit records from `qacct` (best effort: accounting is written with a delay)."""
        done = await self.shell.run(f"timeout 10 qacct -j {shlex.quote(self.name)}")
        reasons = parse_qacct(done.stdout.decode(errors="replace"))
        return {job: reasons[job] for job in jobs if job in reasons}

    async def release(self, allocation: Allocation) -> None:
        prefix = self._files.pop(allocation.id, None)
        command = f"qdel {shlex.quote(allocation.id)} >/dev/null 2>&1"
        if prefix:
            command += f"; s=$?; rm -f {prefix}.hosts {prefix}.hosts.tmp; exit $s"
        await self.release_with(allocation, command)

    async def aclose(self) -> None:
        """A job ended on its own (walltime, qdel from outside) stays held: its host file is
        left for the sweep."""
        if self.may_leave():
            await self.sweep(self.name)
        self._files.clear()

    async def sweep(self, name: str) -> None:
        name = shlex.quote(name)
        await self.shell.run(f"qdel {name} >/dev/null 2>&1; rm -f {self.folder}/{name}.*")


def _gone(state: str | None) -> str:
    if state is None:
        return "gone from qstat (no accounting record yet)"
    return f"deleted (qstat state {state})" if "d" in state else f"qstat state {state}"

