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
    raise ValueError(f"unknown scheduler kind {kind!r}")


__all__ = ["Allocation", "Node", "Scheduler", "create_scheduler"]
