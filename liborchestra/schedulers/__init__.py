"""Schedulers: one module per kind behind `base.Scheduler`."""

from __future__ import annotations

from liborchestra.profile import Profile
from liborchestra.schedulers.base import Allocation, Node, Scheduler
from liborchestra.ssh import SSHPool


def create_scheduler(profile: Profile, pool: SSHPool) -> Scheduler:
    """The scheduler a profile asks for."""
    kind = profile.scheduler.kind
    if kind == "local":
        from liborchestra.schedulers.local import LocalScheduler

        return LocalScheduler(profile, pool)
    if kind == "hosts":
        from liborchestra.schedulers.hosts import HostsScheduler

        return HostsScheduler(profile, pool)
    if kind == "slurm":
        from liborchestra.schedulers.slurm import SlurmScheduler

        return SlurmScheduler(profile, pool)
    if kind == "sge":
        from liborchestra.schedulers.sge import SGEScheduler

        return SGEScheduler(profile, pool)
    if kind == "pbs":
        from liborchestra.schedulers.pbs import PBSScheduler

        return PBSScheduler(profile, pool)
    if kind == "custom":
        from liborchestra.schedulers.custom import CustomScheduler

        return CustomScheduler(profile, pool)
    raise ValueError(f"unknown scheduler kind {kind!r}")


__all__ = ["Allocation", "Node", "Scheduler", "create_scheduler"]
