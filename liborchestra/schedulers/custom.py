"""Custom: allocations made by the profile's own shell commands, as the original runaway did.

`start_allocation` runs in one bash on the frontend (the profile's `ssh.host`, or this machine
without one), with the driver's `RUNAWAY_*` variables exported first, so profiles can be
parametric (`RUNAWAY_NODES_NB=4 runaway ...`). It must set RUNAWAY_NODES; every RUNAWAY_*
variable it sets (a job id, say) stays with the allocation and is exported again for
`get_node_handles` (run on each node, must set RUNAWAY_HANDLES: one slot per handle), for
`node_proxycommand` and for `cancel_allocation`.

Command text is data for bash: each script travels as one quoted `bash -c` word, never pasted
into another shell's syntax, so quotes and `$` in commands mean what they mean in a terminal.
After each command the script writes a snapshot of its RUNAWAY_* variables on stdout (the
commands' own output goes to stderr), so an allocation interrupted halfway can still be
cancelled with what it had. Remote scripts run in their own process group with a watchdog on
the SSH channel: if the channel closes (the engine was cancelled), the group is killed, so a
pending `salloc` is withdrawn instead of left behind.

There is no status command: an allocation is known to end only at its walltime
(`walltime`, or `allocation_duration` minutes in a legacy profile). Then it is reported ended
and cancelled; the engine kills what still runs on it (processes started over SSH are not part
of a cluster job, so the cluster would leave them behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import re
import shlex
import signal
import uuid

import anyio
import attrs

from liborchestra.errors import ConnectionLostError, OrchestraError, SchedulerError, SSHError
from liborchestra.schedulers.base import Allocation, Node, Scheduler
from liborchestra.ssh import Endpoint, HostPool, lost_errors

log = logging.getLogger(__name__)
KILL_GRACE = 1  # seconds between SIGTERM and SIGKILL of an abandoned remote script
_VARIABLE = re.compile(r"RUNAWAY_[A-Za-z0-9_]*")
_PRODUCED = ("RUNAWAY_NODES", "RUNAWAY_HANDLES")  # made by the commands, never forwarded
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")

# Runs the script in its own session and kills that session when the channel's stdin closes
# (SSH channel closed by a cancelled engine, or the connection lost).
_WATCHDOG = """\
setsid bash -c {script} </dev/null & pid=$!
{{ while read -r _; do :; done; kill -TERM -- -$pid; }} <&0 >/dev/null 2>&1 & w=$!
wait $pid; s=$?
if kill -0 $w 2>/dev/null; then kill $w; else sleep {grace}; kill -KILL -- -$pid; fi 2>/dev/null
exit $s
"""


def forwarded_environment() -> dict[str, str]:
    """The driver's RUNAWAY_* variables, forwarded to the allocation commands."""
    return {k: v for k, v in os.environ.items()
            if _VARIABLE.fullmatch(k) and k not in _PRODUCED}


def script(commands: tuple[str, ...], env: dict[str, str], mark: str) -> str:
    """Bash text: the exports, then each command followed by a snapshot of RUNAWAY_* on fd 3
    (`mark index status` then NAME=value, NUL-separated); stops at the first failure. Each
    command runs in the current shell (its exports stay) but without fd 3, so a process it
    leaves in the background cannot hold the snapshots' pipe open."""
    lines = ["exec 3>&1 1>&2"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items() if _VARIABLE.fullmatch(k)]
    for index, command in enumerate(commands):
        lines += [
            "{ :", command, "} 3>&-",
            f"__s=$?; {{ printf '%s\\0' \"{mark} {index} $__s\"; compgen -v RUNAWAY_ | "
            "while IFS= read -r __v; do printf '%s=%s\\0' \"$__v\" \"${!__v}\"; done; } >&3; "
            "[ $__s -eq 0 ] || exit $__s",
        ]
    return "\n".join(lines) + "\n"


@attrs.define
class ScriptRun:
    """One run of a command list: what it printed, and the snapshots read so far."""

    field: str
    host: str
    commands: tuple[str, ...]
    mark: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    out: list[bytes] = attrs.field(factory=list)
    err: list[bytes] = attrs.field(factory=list)
    status: int | None = None

    def snapshots(self) -> list[tuple[int, int, dict[str, str]]]:
        """(command index, its status, RUNAWAY_* variables after it) for each finished one."""
        found: list[tuple[int, int, dict[str, str]]] = []
        for item in b"".join(self.out).decode(errors="replace").split("\0"):
            head = item.split(" ")
            if len(head) == 3 and head[0] == self.mark and head[1].isdigit():
                found.append((int(head[1]), int(head[2]), {}))
            elif found and "=" in item:
                name, _, value = item.partition("=")
                found[-1][2][name] = value
        return found

    @property
    def variables(self) -> dict[str, str] | None:
        """RUNAWAY_* after the last finished command; None if none finished."""
        found = self.snapshots()
        return found[-1][2] if found else None

    def failure(self) -> str | None:
        """Why the run failed, naming the field, the command and the host; None if it did not."""
        found = self.snapshots()
        done = len(found) if not found or found[-1][1] == 0 else found[-1][0]
        if done >= len(self.commands) and self.status == 0:
            return None
        status = found[-1][1] if found and found[-1][1] else self.status
        which = (f"command {done + 1} (`{self.commands[done]}`)" if done < len(self.commands)
                 else "the script")
        return (f"custom on {self.host}: {self.field} {which} failed with status {status}: "
                f"{self.said()}")

    def said(self) -> str:
        lines = [line.strip() for line in b"".join(self.err).decode(errors="replace").splitlines()
                 if line.strip()]
        return " / ".join(lines[-3:]) or "(no message)"


class CustomScheduler(Scheduler):
    kind = "custom"

    def __init__(self, profile, pool) -> None:
        super().__init__(profile, pool)
        self.spec = profile.scheduler
        if self.spec.custom is None:
            raise SchedulerError(f"{profile.source}: a custom profile needs its commands")
        self.commands = self.spec.custom
        self._login = self.login()
        self._frontend = self._login.host if self._login else "localhost"
        self._variables: dict[str, dict[str, str]] = {}  # live allocation id -> RUNAWAY_*
        self._ids = itertools.count(1)
        self._uses_walltime = any("RUNAWAY_WALLTIME" in c for c in self.commands.start_allocation)

    # -- running command lists -----------------------------------------------------------------

    async def _run(self, run: ScriptRun, env: dict[str, str], where: Endpoint | None) -> None:
        """Run the commands of `run` on `where` (None: this machine), filling `run` as it goes.
        Cancelling closes the channel, and the watchdog kills the remote script."""
        text = script(run.commands, env, run.mark)
        wrapped = _WATCHDOG.format(script=shlex.quote(text), grace=KILL_GRACE)
        if where is None:
            return await _run_here(wrapped, run)
        host: HostPool = self.pool.host(where)
        async with host.process(f"bash -c {shlex.quote(wrapped)}") as proc:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_read, proc.stdout, run.out)
                    tg.start_soon(_read, proc.stderr, run.err)
                await proc.wait_closed()
            except lost_errors() as error:
                raise ConnectionLostError(f"{run.host}: connection lost: {error}") from None
            run.status = proc.exit_status
        if run.status is None:
            raise ConnectionLostError(f"{run.host}: channel closed before exit status")

    # -- allocations ---------------------------------------------------------------------------

    def _duration(self, walltime: float | None) -> float | None:
        """How long an allocation lasts: what was asked if the commands use $RUNAWAY_WALLTIME,
        else what the profile declares."""
        declared = self.spec.walltime
        if self._uses_walltime:
            return walltime or declared
        if walltime and declared and walltime > declared + 1:
            raise SchedulerError(
                f"custom on {self._frontend}: work needs allocations of {math.ceil(walltime / 60)}"
                f" min but the profile's allocations last {math.ceil(declared / 60)} min; raise "
                "walltime (allocation_duration), or pass $RUNAWAY_WALLTIME (minutes) to the "
                "cluster in start_allocation")
        return declared

    async def allocate(self, walltime: float | None = None) -> Allocation:
        duration = self._duration(walltime)
        env = forwarded_environment()
        if duration:
            env["RUNAWAY_WALLTIME"] = str(max(1, math.ceil(duration / 60)))
        run = ScriptRun("start_allocation", self._frontend, self.commands.start_allocation)
        try:
            await self._run(run, env, self._login)
            problem = run.failure()
            if problem:
                raise SchedulerError(problem)
            variables = run.variables or {}
            nodes = self._nodes(variables.get("RUNAWAY_NODES", ""), variables, run)
            granted = anyio.current_time()
            handles = await self._all_handles(nodes, variables)
        except BaseException:
            made = {k: v for k, v in (run.variables or {}).items() if v and env.get(k) != v}
            if made:  # the commands set something (a job id): undo what they did
                with anyio.CancelScope(shield=True), anyio.move_on_after(60):
                    await self._cancel_quietly(run.variables, "a failed request")
            raise
        ident = variables.get("RUNAWAY_JOB_ID", "").strip()
        if not ident or ident in self._variables:
            ident = f"custom-{next(self._ids)}"
        self._variables[ident] = variables
        gpus = self.profile.slots == "gpus"
        shared = self.profile.shared_filesystem
        return Allocation(
            id=ident,
            nodes=tuple(Node(name=name, endpoint=endpoint,
                             filesystem="cluster" if shared else name,
                             handles=handles[name], gpus=gpus) for name, endpoint in nodes),
            ends_at=None if duration is None else granted + duration, duration=duration)

    def _nodes(self, text: str, variables: dict[str, str],
               run: ScriptRun) -> list[tuple[str, Endpoint]]:
        names = list(dict.fromkeys(text.split()))
        if not names:
            exported = ", ".join(f"{k}={v!r}" for k, v in sorted(variables.items())) or "nothing"
            raise SchedulerError(
                f"custom on {self._frontend}: start_allocation did not export RUNAWAY_NODES "
                f"(the space-separated node names); it exported {exported}; it said: "
                f"{run.said()}")
        for name in names:
            if not _HOST_NAME.fullmatch(name):
                raise SchedulerError(
                    f"custom on {self._frontend}: start_allocation exported RUNAWAY_NODES="
                    f"{text!r}: {name!r} is not a host name (expand Slurm host lists with "
                    "`scontrol show hostnames`)")
        return [(name, self._endpoint(name, variables)) for name in names]

    def _endpoint(self, name: str, variables: dict[str, str]) -> Endpoint:
        """How to reach a node: the profile's proxy command, or SSH through the frontend."""
        proxy = self.commands.node_proxycommand
        if not proxy:
            return self.endpoint(name, jump=self._login)
        # The node name is data: the shell expands $RUNAWAY_NODE_ID, it is never pasted in.
        env = {**variables, "RUNAWAY_NODE_ID": name}
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(env.items()))
        return attrs.evolve(self.endpoint(name),
                            proxy_command=shlex.join(["bash", "-c", f"{exports}exec {proxy}"]))

    async def _all_handles(self, nodes: list[tuple[str, Endpoint]],
                           variables: dict[str, str]) -> dict[str, tuple[str, ...]]:
        handles: dict[str, tuple[str, ...]] = {}
        errors: list[OrchestraError] = []

        async def one(name: str, endpoint: Endpoint) -> None:
            try:
                handles[name] = await self._handles(name, endpoint, variables)
            except OrchestraError as error:
                errors.append(error)

        async with anyio.create_task_group() as tg:
            for name, endpoint in nodes:
                tg.start_soon(one, name, endpoint)
        if errors:
            raise errors[0]
        return handles

    async def _handles(self, name: str, endpoint: Endpoint,
                       variables: dict[str, str]) -> tuple[str, ...]:
        run = ScriptRun("get_node_handles", name, self.commands.get_node_handles)
        try:
            await self._run(run, {**variables, "RUNAWAY_NODE_ID": name}, endpoint)
        except SSHError as error:
            if not endpoint.proxy_command:
                raise
            raise SchedulerError(f"custom: cannot reach node {name} through node_proxycommand "
                                 f"`{self.commands.node_proxycommand}`: {error}") from None
        problem = run.failure()
        if problem:
            raise SchedulerError(problem)
        handles = tuple((run.variables or {}).get("RUNAWAY_HANDLES", "").split())
        if not handles:
            raise SchedulerError(
                f"custom on {name}: get_node_handles did not export RUNAWAY_HANDLES (the "
                f"space-separated slot handles of the node, e.g. CPU ids); it said: "
                f"{run.said()}")
        return handles

    # -- ending --------------------------------------------------------------------------------

    async def poll(self, allocations: list[Allocation]) -> dict[str, str]:
        """No status command: an allocation ends at its walltime, and is cancelled then."""
        now = anyio.current_time()
        ended = {a.id: "walltime reached" for a in allocations
                 if a.ends_at is not None and a.ends_at <= now}
        for ident in ended:
            variables = self._variables.pop(ident, None)
            if variables is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(60):
                    await self._cancel_quietly(variables, f"allocation {ident}")
        return ended

    async def release(self, allocation: Allocation) -> None:
        variables = self._variables.pop(allocation.id, None)
        if variables is None:  # unknown, or released already
            return
        try:
            await self._cancel(variables, f"allocation {allocation.id}")
        except SSHError:
            self._variables[allocation.id] = variables  # unreachable: aclose tries again
            raise

    async def aclose(self) -> None:
        for ident, variables in list(self._variables.items()):
            del self._variables[ident]
            await self._cancel_quietly(variables, f"allocation {ident}")

    async def _cancel(self, variables: dict[str, str], what: str) -> None:
        run = ScriptRun("cancel_allocation", self._frontend, self.commands.cancel_allocation)
        await self._run(run, variables, self._login)
        problem = run.failure()
        if problem:
            raise SchedulerError(f"{problem} (cancelling {what})")

    async def _cancel_quietly(self, variables: dict[str, str], what: str) -> None:
        try:
            await self._cancel(variables, what)
        except OrchestraError as error:
            log.warning("%s", error)


async def _run_here(wrapped: str, run: ScriptRun) -> None:
    """The same watchdog on this machine: closing stdin ends the script with SIGTERM (a
    pending `salloc` withdraws its request), SIGKILL only if it lingers."""
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", wrapped, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read, proc.stdout, run.out)
            tg.start_soon(_read, proc.stderr, run.err)
        run.status = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.stdin.close()
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(KILL_GRACE + 5):
                    await proc.wait()
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()


async def _read(reader: object, into: list[bytes]) -> None:
    while True:
        chunk = await reader.read(65536)  # type: ignore[attr-defined]
        if not chunk:
            return
        into.append(chunk)
