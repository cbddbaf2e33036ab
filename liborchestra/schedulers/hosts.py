"""A fixed list of SSH hosts as one allocation, each with a slot count (default: its cores).

When the profile names a login host (`ssh.host`), the hosts are reached through it, as nodes
behind a cluster's front end usually are.
"""

from __future__ import annotations

import anyio

from liborchestra.errors import SchedulerError
from liborchestra.schedulers.base import Allocation, Node, Scheduler, slot_handles
from liborchestra.shell import SSHShell


class HostsScheduler(Scheduler):
    kind = "hosts"

    async def allocate(self, walltime: float | None = None) -> Allocation:
        specs = self.profile.scheduler.hosts
        nodes: list[Node | None] = [None] * len(specs)
        jump = self.login()

        async def probe(i: int) -> None:
            spec = specs[i]
            endpoint = self.endpoint(spec.host, spec.port, jump)
            slots = spec.slots or self.profile.slots
            cores = 1
            if slots == "cores":
                done = await SSHShell(self.pool.host(endpoint)).run("nproc")
                text = done.stdout.decode(errors="replace").strip()
                if done.returncode != 0 or not text.isdigit():
                    raise SchedulerError(f"{endpoint}: `nproc` failed: "
                                         f"{done.stderr.decode(errors='replace').strip()}")
                cores = int(text)
            filesystem = "shared" if self.profile.shared_filesystem else str(endpoint)
            nodes[i] = Node(name=spec.host, endpoint=endpoint, filesystem=filesystem,
                            handles=slot_handles(slots, cores, self.profile.scheduler.gpus),
                            gpus=slots == "gpus")

        async with anyio.create_task_group() as tg:
            for i in range(len(specs)):
                tg.start_soon(probe, i)
        return Allocation(id="hosts", nodes=tuple(n for n in nodes if n is not None))

    def reach(self, name: str, allocation: str | None = None) -> Node:
        port = next((h.port for h in self.profile.scheduler.hosts if h.host == name), None)
        filesystem = "shared" if self.profile.shared_filesystem else name
        return Node(name=name, endpoint=self.endpoint(name, port, self.login()),
                    filesystem=filesystem, handles=())

    async def release(self, allocation: Allocation) -> None:
        return None
