"""PBS / Torque: allocations as holder jobs submitted on the login host.

An allocation is a job script written to the profile's remote directory (which the login host
shares with the nodes) and submitted with `qsub FILE`; its `#PBS -N` / `#PBS -l
nodes=N:ppn=M,walltime=...` directives ask for the nodes. The script copies `$PBS_NODEFILE`
(one line per granted processor) to a file next to it, then sleeps until the walltime. Every
job of an engine has the same name; one `qstat -f` of the engine's jobs polls them all, and a
final `qdel`, when a job may be left, sweeps the known jobs and any job of that name `qstat
-u` still lists (where it shows the name cut short, as PBS Pro does, `qstat -f` says whose
it is).

`slots: N` asks `ppn=N`; `slots: gpus` asks `gpus=<scheduler.gpus>` per node; `slots: cores`
asks no ppn (the site's default, often 1: a command-line `-l nodes=...` in `options` overrides
the script's directive). Each node then offers as many slots as `$PBS_NODEFILE` lists it
(the processors granted there); with `slots: gpus`, its declared GPUs.

The profile's `env` is exported before every PBS command on the login host (and qsub passes
it to nothing: holder jobs need none). It is how a profile points at PBS commands that are not
on the PATH of a non-interactive SSH command, e.g. `env: {PATH: /opt/pbs/bin:/usr/bin:/bin}`.

Test bed only: its PBS commands are Slurm's Torque wrappers, whose jobs get no
`$PBS_NODEFILE`; the holder then builds the same list from `$SLURM_JOB_NODELIST` and
`$SLURM_TASKS_PER_NODE`. A real PBS sets `$PBS_NODEFILE` and never takes that branch.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import uuid
from collections.abc import Iterable

from liborchestra.schedulers.base import Allocation
from liborchestra.schedulers.cluster import RUNNING, ClusterScheduler
from liborchestra.ssh import Completed
from liborchestra.transfer import remote_path

FOREVER = 2147483647
ALIVE = {"R", "S"}  # running, suspended; Q H W T waiting, E exiting, C completed
_UNKNOWN = re.compile(r"unknown job", re.IGNORECASE)

# Test bed fallback (see the module docstring): $PBS_NODEFILE's format from Slurm's variables.
_SLURM_NODEFILE = """\
  hosts=($(scontrol show hostnames "$SLURM_JOB_NODELIST")); i=0
  for c in ${SLURM_TASKS_PER_NODE//,/ }; do
    n=${c%%(*}; r=1; case $c in *x*) r=${c##*x}; r=${r%)};; esac
    for ((k = 0; k < r; k++)); do
      for ((j = 0; j < n; j++)); do echo "${hosts[i]}"; done; i=$((i + 1))
    done
  done"""


def walltime_text(seconds: float) -> str:
    """PBS walltime HH:MM:SS (hours may exceed 24)."""
    total = math.ceil(seconds)
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def short_id(job: str) -> str:
    """`123` of `123.server.domain` (Torque prints ids with the server's name)."""
    return job.strip().split(".")[0]


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """`qstat -f` (Torque's format): short job id -> attributes. Values Torque wraps over
    several lines (continuations indented by a tab, without ` = `) are joined."""
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            current = jobs.setdefault(short_id(line.split(":", 1)[1]), {})
            key = None
        elif current is not None and " = " in line:
            key, _, value = line.strip().partition(" = ")
            current[key] = value.strip()
        elif current is not None and key and line.startswith(("\t", " ")) and line.strip():
            current[key] += line.strip()
    return jobs


def parse_qstat_user(text: str) -> list[tuple[str, str, str]]:
    """(short id, name, state) from `qstat -u USER` (alternative format: Job ID, Username,
    Queue, Jobname, SessID, NDS, TSK, Memory, Time, S, Time)."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 11 and parts[0][:1].isdigit():
            rows.append((short_id(parts[0]), parts[3], parts[9]))
    return rows


def cut_short(shown: str, name: str) -> bool:
    """Whether `qstat -u` may be showing `name` as `shown`: cut to its column, as Torque and
    the bed's wrappers cut it (at 16 and 20 characters), or with a `*` for the rest, as PBS
    Pro marks it (at 10)."""
    stem = shown[:-1] if shown.endswith("*") else shown
    return 0 < len(stem) < len(name) and name.startswith(stem)


def parse_nodefile(text: str) -> tuple[float | None, list[tuple[str, int]]]:
    """The holder's file: its start time (epoch), then one host per granted processor."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    start = float(lines.pop(0)) if lines and lines[0].isdigit() else None
    hosts: dict[str, int] = {}
    for host in lines:
        hosts[host] = hosts.get(host, 0) + 1
    return start, list(hosts.items())


class PBSScheduler(ClusterScheduler):
    kind = "pbs"
    missing = "are the PBS commands on the PATH? the profile's env can set it"

    def __init__(self, profile, pool) -> None:
        super().__init__(profile, pool)
        self.name = f"orch-{uuid.uuid4().hex[:10]}"  # 15: Torque's `qstat -u` shows 16
        self.folder = f"{remote_path(profile.directory)}/pbs"
        self._env = "".join(f"export {k}={shlex.quote(v)}; " for k, v in profile.env)
        self._seq = itertools.count()
        self._files: dict[str, str] = {}  # job id -> its files' prefix (a shell word)

    async def run(self, command: str, input: bytes | None = None) -> Completed:
        """Every PBS command sees the profile's env (how a profile puts PBS on the PATH)."""
        done = await self.shell.run(self._env + command, input)
        if done.returncode == 127:
            raise self.error(f"a PBS command was not found ({self.missing})")
        return done

    def resources(self, walltime: float | None) -> str:
        slots, nodes = self.profile.slots, f"nodes={self.spec.nodes}"
        if isinstance(slots, int):
            nodes += f":ppn={slots}"
        elif slots == "gpus":
            nodes += f":gpus={self.spec.gpus}"
        return nodes + (f",walltime={walltime_text(walltime)}" if walltime else "")

    def holder(self, prefix: str, walltime: float | None) -> str:
        sleep = math.ceil(walltime) + 60 if walltime else FOREVER
        return "\n".join([
            "#!/bin/bash",
            f"#PBS -N {self.name}",
            f"#PBS -l {self.resources(walltime)}",
            "#PBS -S /bin/bash",  # PBS runs scripts with the login shell otherwise
            f"f={prefix}.nodes",
            "{ date +%s",
            '  if [ -n "$PBS_NODEFILE" ]; then cat "$PBS_NODEFILE"; else',
            _SLURM_NODEFILE,
            '  fi; } > "$f.tmp" && mv -f "$f.tmp" "$f" || exit 1',
            f"exec -a {shlex.quote(self.name + '-holder')} sleep {sleep}",
        ]) + "\n"

    # -- allocations ---------------------------------------------------------------------------

    async def allocate(self, walltime: float | None = None) -> Allocation:
        return await self.tracked(self._submit(walltime or self.spec.walltime))

    async def _submit(self, walltime: float | None) -> Allocation:
        prefix = f"{self.folder}/{self.name}.{next(self._seq)}"
        options = shlex.join(["-o", "/dev/null", "-e", "/dev/null", *self.spec.options])
        done = await self.run(
            f"mkdir -p {self.folder} && cd {self.folder} && cat > {prefix}.pbs && "
            f"qsub {options} {prefix}.pbs; s=$?; rm -f {prefix}.pbs; exit $s",
            self.holder(prefix, walltime).encode())
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        job = out.strip().splitlines()[-1].strip() if out.strip() else ""
        if done.returncode != 0 or not re.fullmatch(r"\d+(\.\S+)?", job):
            what = f"qsub -l {self.resources(walltime)} {shlex.join(self.spec.options)}"
            raise self.error(f"`{what.strip()}` refused: {_message(err + out)}")
        self._files[job] = prefix
        return await self.hold(job, prefix, walltime, self._probe)

    async def _probe(self, job: str, prefix: str):
        """Node file, login clock and `qstat -f` in one round trip."""
        done = await self.run(f"cat {prefix}.nodes 2>/dev/null; echo \"#now $(date +%s)\"; "
                              f"qstat -f {shlex.quote(job)}")
        out = done.stdout.decode(errors="replace")
        head, _, tail = out.partition("#now ")
        now_text, _, qstat = tail.partition("\n")
        start, hosts = parse_nodefile(head)
        attributes = parse_qstat_full(qstat).get(short_id(job))
        if attributes is None:
            self._check(done, "qstat -f")
        state = (attributes or {}).get("job_state")
        if start is not None and hosts:
            status = RUNNING
        elif state is None or state in ("C", "E"):
            status = _reason(attributes) if attributes else "gone from qstat"
        else:
            status = RUNNING if state in ALIVE else None
        return start, hosts, float(now_text), status

    def _check(self, done, what: str) -> None:
        """A failed qstat is an error unless it only said some jobs are unknown (gone)."""
        err = done.stderr.decode(errors="replace")
        lines = [line for line in err.splitlines() if line.strip()]
        if done.returncode != 0 and lines and not all(_UNKNOWN.search(x) for x in lines):
            raise self.error(f"`{what}` failed: {_message(err)}")

    async def poll(self, allocations: list[Allocation]) -> dict[str, str]:
        if not allocations:
            return {}
        done = await self.run("qstat -f " + " ".join(shlex.quote(a.id) for a in allocations))
        self._check(done, "qstat -f")
        jobs = parse_qstat_full(done.stdout.decode(errors="replace"))
        ended = {}
        for allocation in allocations:
            attributes = jobs.get(short_id(allocation.id))
            if attributes is None:
                ended[allocation.id] = "gone from qstat"
            elif attributes.get("job_state") not in ALIVE:
                ended[allocation.id] = _reason(attributes)
        return ended

    async def release(self, allocation: Allocation) -> None:
        prefix = self._files.pop(allocation.id, None)
        command = f"qdel {shlex.quote(allocation.id)} >/dev/null 2>&1"
        if prefix:
            command += f"; s=$?; rm -f {prefix}.nodes {prefix}.nodes.tmp {prefix}.pbs; exit $s"
        await self.release_with(allocation, command)

    async def aclose(self) -> None:
        """A job ended on its own (walltime, qdel from outside) stays held: its node file is
        left for the sweep."""
        if self.may_leave():
            await self.sweep(self.name, known=self._files)
        self._files.clear()

    async def sweep(self, name: str, known: Iterable[str] = ()) -> None:
        """Delete the `known` jobs and any job named `name` qstat lists (one submitted while
        an engine was interrupted, before qsub could say its id), and their files. A name
        `qstat -u` shows cut short is looked up in `qstat -f`, by the job's id."""
        done = await self.run("qstat -u \"$USER\"")
        rows = [(job, shown) for job, shown, state in
                parse_qstat_user(done.stdout.decode(errors="replace")) if state != "C"]
        jobs = {short_id(job) for job in known} | {job for job, shown in rows if shown == name}
        maybe = sorted(job for job, shown in rows if shown != name and cut_short(shown, name))
        if maybe:  # shown cut short: their full names say which are this one
            done = await self.run("qstat -f " + " ".join(map(shlex.quote, maybe)))
            full = parse_qstat_full(done.stdout.decode(errors="replace"))
            jobs |= {job for job in maybe if full.get(job, {}).get("Job_Name") == name}
        command = f"rm -f {self.folder}/{shlex.quote(name)}.*"
        if jobs:
            command = f"qdel {' '.join(map(shlex.quote, sorted(jobs)))} >/dev/null 2>&1; " + command
        await self.run(command)


def _reason(attributes: dict[str, str]) -> str:
    reason = f"job_state {attributes.get('job_state', '?')}"
    if "exit_status" in attributes:
        reason += f", exit_status {attributes['exit_status']}"
    return reason


def _message(text: str, n: int = 3) -> str:
    """The scheduler's words: its error lines if it marked any, else its last lines."""
    lines = [line.strip().strip("'").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.search(r"error|refused|reject|invalid", line, re.I)
              and not line.startswith("There was an error running")]
    return " / ".join((errors or lines)[-n:]) or "(no message)"
