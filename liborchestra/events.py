"""Typed events the engine emits. CLIs render them; the library never prints."""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Union

import attrs

from liborchestra.execution import Result


@attrs.frozen
class AllocationRequested:
    scheduler: str


@attrs.frozen
class AllocationGranted:
    allocation: str
    nodes: tuple[str, ...]
    slots: int
    ends_at: float | None  # monotonic deadline, None when unlimited


@attrs.frozen
class AllocationReleased:
    allocation: str
    reason: str


@attrs.frozen
class AllocationRefused:
    """A request was refused. `retry_in` seconds: it will be asked again (the scheduler was
    busy or out of reach); None: it cannot succeed, and the work waiting for it fails."""

    scheduler: str
    message: str
    retry_in: float | None


@attrs.frozen
class CodeSent:
    filesystem: str
    digest: str
    size: int


@attrs.frozen
class ExecutionStarted:
    uuid: str
    node: str
    slot: str
    allocation: str = ""  # the allocation (Slurm job, SGE job...) it runs in
    digest: str = ""  # SHA-256 of the code archive it runs


@attrs.frozen
class Output:
    """A chunk of live output of a streamed execution (`stream` is 'stdout' or 'stderr')."""

    uuid: str
    stream: str
    data: bytes


@attrs.frozen
class ExecutionFinished:
    result: Result


@attrs.frozen
class ConnectionProblem:
    """A connection died or a channel was refused; the engine is recovering."""

    host: str
    message: str


@attrs.frozen
class AgentStarted:
    """A node agent is up on `node`: executions there start without a channel each."""

    node: str
    python: str
    pid: int


@attrs.frozen
class AgentUnavailable:
    """No node agent on `node` (no python3 >= 3.8, or it keeps dying): executions there use
    the shell wrapper, slower but the same contract. Said once per node."""

    node: str
    reason: str


Event = Union[AllocationRequested, AllocationGranted, AllocationReleased, AllocationRefused,
              CodeSent,
              ExecutionStarted, Output, ExecutionFinished, ConnectionProblem,
              AgentStarted, AgentUnavailable]
Listener = Callable[[Event], None]


def deliver(listeners: Iterable[Listener], event: object) -> None:
    """Give `event` to every listener; a broken listener must not break executions."""
    for listener in listeners:
        try:
            listener(event)  # type: ignore[arg-type]
        except Exception:
            logging.getLogger(__name__).exception("event listener failed on %r", event)
