"""This machine as one allocation: one slot per core (or the profile's count), no SSH."""

from __future__ import annotations

import os
import socket

from liborchestra.schedulers.base import Allocation, Node, Scheduler, slot_handles


class LocalScheduler(Scheduler):
    kind = "local"

    async def allocate(self, walltime: float | None = None) -> Allocation:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        node = Node(name=socket.gethostname(), endpoint=None, filesystem="local",
                    handles=slot_handles(self.profile.slots, cores or 1,
                                            self.profile.scheduler.gpus),
                    gpus=self.profile.slots == "gpus")
        return Allocation(id="local", nodes=(node,))

    def reach(self, name: str, allocation: str | None = None) -> Node:
        return Node(name=name, endpoint=None, filesystem="local", handles=())

    async def release(self, allocation: Allocation) -> None:
        return None
