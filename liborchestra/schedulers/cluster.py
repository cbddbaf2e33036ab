"""What Slurm, Grid Engine and PBS share: commands run on the login host over SSH, nodes
reached behind it, allocations built from the hosts and slot counts the cluster granted."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import anyio

from liborchestra.errors import SchedulerError
from liborchestra.profile import Profile
from liborchestra.schedulers.base import Allocation, Node, Scheduler, SrunReach, slot_handles
from liborchestra.shell import SSHShell
from liborchestra.ssh import Completed, SSHPool

RUNNING = "running"  # a holder probe's status: the job runs (None: it still waits)
HOLDER_TIMEOUT = 120.0  # a running holder job must have written its host file by then
POLL_FIRST, POLL_MAX = 0.25, 2.0  # wait-for-start polling: first interval, doubling up to
_NOISE = {"Exiting."}  # what Grid Engine's clients add after their real message


class ClusterScheduler(Scheduler):
    kind = "cluster"
    missing = "is it installed on the login host, and on its PATH?"  # hint for exit 127

    def __init__(self, profile: Profile, pool: SSHPool) -> None:
        super().__init__(profile, pool)
        self.spec = profile.scheduler
        self._login = self.login()
        self.host = self._login.host
        self.shell = SSHShell(pool.host(self._login), self.host)
        # What the final sweep by name is for: jobs granted and not yet released, and whether
        # a request or a release ended otherwise than as asked (a job may be left).
        self._held: set[str] = set()
        self._unsure = False

    def error(self, text: str) -> SchedulerError:
        return SchedulerError(f"{self.kind} on {self.host}: {text}")

    async def command(self, command: str, what: str, input: bytes | None = None) -> str:
        """Run on the login host; a failure is one error naming host, command and message."""
        done = await self.run(command, input)
        out = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise self.error(f"`{what}` failed: "
                             f"{last_lines(done.stderr.decode(errors='replace') or out)}")
        return out

    async def run(self, command: str, input: bytes | None = None) -> Completed:
        """Run on the login host; only a missing command is an error here."""
        done = await self.shell.run(command, input)
        if done.returncode == 127:
            raise self.error(f"`{command.split()[0]}` not found ({self.missing})")
        return done

    async def tracked(self, request: Awaitable[Allocation]) -> Allocation:
        """The allocation `request` gives, held until released. A request refused, failed or
        interrupted may have left a job (submitted before its id was known): the final
        sweep runs."""
        try:
            allocation = await request
        except BaseException:
            self._unsure = True
            raise
        self._held.add(allocation.id)
        return allocation

    async def release_with(self, allocation: Allocation, command: str) -> None:
        """Release `allocation` with `command`, whose status says whether it did."""
        try:
            done = await self.run(command)
        except BaseException:
            self._unsure = True
            raise
        if done.returncode == 0:
            self._held.discard(allocation.id)

    def may_leave(self) -> bool:
        """Whether a job may be left for the final sweep: every request granted and then
        released cleanly leaves none (a command less as each engine ends)."""
        return self._unsure or bool(self._held)

    def node(self, name: str, granted: int, fixed: bool = False,
             srun_job: str | None = None) -> Node:
        """A granted node: `granted` slots (or the profile's fixed count when `fixed`)."""
        profile = self.profile
        gpus = profile.slots == "gpus"
        count: int | str = profile.slots if fixed or gpus else granted
        handles = slot_handles(count, granted, self.spec.gpus)
        filesystem = "cluster" if profile.shared_filesystem else name
        if srun_job is not None:
            return Node(name=name, endpoint=None, filesystem=filesystem, handles=handles,
                        srun=SrunReach(self._login, srun_job), gpus=gpus)
        return Node(name=name, endpoint=self.endpoint(name, jump=self.node_jump()),
                    filesystem=filesystem, handles=handles, gpus=gpus)

    async def hold(self, job: str, prefix: str, walltime: float | None,
                   probe: Probe) -> Allocation:
        """Wait until a holder job runs and has written its host file (`prefix`.hosts or
        .nodes, on the shared directory), polling with one command per round; withdraw the
        job if anything goes wrong, cancellation included.

        `probe(job, prefix)` -> (holder start time, [(host, slots)], login host's clock,
        status): status None while the job waits, RUNNING once it runs, else why it ended."""
        try:
            delay, running_since = POLL_FIRST, None
            while True:
                start, hosts, now, status = await probe(job, prefix)
                if start is not None and hosts:
                    return self.allocation(job, hosts, walltime, now - start)
                if status not in (None, RUNNING):
                    raise self.error(f"holder job {job} ended before it ran: {status}")
                if status == RUNNING:
                    running_since = running_since or anyio.current_time()
                    if anyio.current_time() - running_since > HOLDER_TIMEOUT:
                        raise self.error(
                            f"holder job {job} runs but its host file ({prefix}.*) never "
                            f"appeared on the login host: is {self.profile.directory} shared "
                            "between the login host and the nodes?")
                await anyio.sleep(delay)
                delay = min(POLL_MAX, delay * 2)
        except BaseException:  # raised as it was: a failed withdrawal leaves the sweep to it
            with anyio.CancelScope(shield=True), anyio.move_on_after(30), \
                    contextlib.suppress(SchedulerError):
                await self.release(Allocation(job, ()))
            raise

    def allocation(self, job: str, hosts: list[tuple[str, int]], walltime: float | None,
                   elapsed: float, **node: object) -> Allocation:
        """An allocation of `hosts` (name, granted slots) that has run `elapsed` seconds."""
        ends_at = None if walltime is None else anyio.current_time() + walltime - max(0, elapsed)
        return Allocation(id=job, nodes=tuple(self.node(n, c, **node) for n, c in hosts),
                          ends_at=ends_at, duration=walltime)


Probe = Callable[[str, str], Awaitable[tuple[float | None, list[tuple[str, int]], float,
                                             str | None]]]


def last_lines(text: str, n: int = 3) -> str:
    """The last lines a command said, on one line."""
    lines = [line.strip() for line in text.strip().splitlines()
             if line.strip() and line.strip() not in _NOISE]
    return " / ".join(lines[-n:]) or "(no message)"
