"""What every scheduler provides: allocations of nodes, each node split into slot handles.

A scheduler only grants and releases allocations and says when one ended. Placing executions
on slots, shipping code and fetching results is the engine's job, the same for every kind.
"""

from __future__ import annotations

import abc

import attrs

from liborchestra.profile import Profile
from liborchestra.ssh import Endpoint, SSHPool


@attrs.frozen
class Node:
    """A machine of an allocation: how to reach it and which slot handles it offers."""

    name: str  # RUNAWAY_NODE_ID
    endpoint: Endpoint | None  # None: this machine (or reached by srun)
    filesystem: str  # code is shipped once per filesystem key
    handles: tuple[str, ...]  # one slot each (RUNAWAY_HANDLE_ID)
    srun: SrunReach | None = None  # reach by `srun --overlap` steps from the login host
    gpus: bool = False  # slots are GPUs: each gets CUDA_VISIBLE_DEVICES=<handle>


@attrs.frozen
class SrunReach:
    login: Endpoint
    job: str


@attrs.frozen
class Allocation:
    id: str
    nodes: tuple[Node, ...]
    ends_at: float | None = None  # anyio.current_time() deadline; None: no walltime
    duration: float | None = None  # the walltime granted, seconds

    @property
    def slots(self) -> int:
        return sum(len(node.handles) for node in self.nodes)


class Scheduler(abc.ABC):
    """Grants and releases allocations. One instance per engine."""

    kind: str = "abstract"

    def __init__(self, profile: Profile, pool: SSHPool) -> None:
        self.profile, self.pool = profile, pool

    @abc.abstractmethod
    async def allocate(self, walltime: float | None = None) -> Allocation:
        """Ask for one allocation (at least `walltime` seconds long when given) and wait until
        it is granted; raise SchedulerError with the scheduler's own message if refused."""

    @abc.abstractmethod
    async def release(self, allocation: Allocation) -> None:
        """Give an allocation back. Must be safe to call twice and on an ended allocation."""

    async def poll(self, allocations: list[Allocation]) -> dict[str, str]:
        """Which of these allocations ended, with why. One call covers all of them."""
        return {}

    async def aclose(self) -> None:
        """Last sweep at shutdown: anything of this engine still known to the cluster goes."""
        return None

    async def sweep(self, name: str) -> None:
        """Cancel whatever the cluster still knows under the job name `name` of an earlier
        engine (one killed with a request in flight, before it learnt the job's id)."""
        return None

    def endpoint(self, host: str, port: int | None = None,
                 jump: Endpoint | None = None) -> Endpoint:
        """An endpoint with the profile's SSH options (user, keys, known_hosts, config)."""
        ssh = self.profile.ssh
        if ssh is None:
            return Endpoint(host=host, port=port, jump=jump)
        return Endpoint(host=host, port=port if port else (ssh.port if host == ssh.host else None),
                        user=ssh.user, identities=ssh.identity, known_hosts=ssh.known_hosts,
                        config=ssh.config, jump=jump)

    def reach(self, name: str, allocation: str | None = None) -> Node:
        """How to reach a node by name outside any allocation (to recover a run on resume);
        `allocation` is the one the run was placed in, when known."""
        filesystem = "cluster" if self.profile.shared_filesystem else name
        return Node(name=name, endpoint=self.endpoint(name, jump=self.node_jump()),
                    filesystem=filesystem, handles=())

    def node_jump(self) -> Endpoint | None:
        """The host nodes are reached through: the login host, unless the profile says they
        are reachable from here (`reach: direct`: then only the user's SSH config decides, a
        ProxyJump there included). Direct, a node's traffic does not load a shared login node's
        sshd, and a connection takes one handshake, not two."""
        return None if self.profile.reach == "direct" else self.login()

    def login(self) -> Endpoint | None:
        """The profile's login host, if it has one."""
        ssh = self.profile.ssh
        return self.endpoint(ssh.host) if ssh and ssh.host else None


def slot_handles(slots: int | str, cores: int, gpus: int | None = None) -> tuple[str, ...]:
    """Slot handles of a node: a fixed number, one per core, or one per GPU."""
    count = slots if isinstance(slots, int) else (gpus or 0) if slots == "gpus" else cores
    return tuple(str(i) for i in range(max(1, count)))
