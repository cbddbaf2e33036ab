"""Typed events the engine emits. CLIs render them; the library never prints."""

from __future__ import annotations

from typing import Callable, Union

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
class CodeSent:
    filesystem: str
    digest: str
    size: int


@attrs.frozen
class ExecutionStarted:
    uuid: str
    node: str
    slot: str


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


Event = Union[AllocationRequested, AllocationGranted, AllocationReleased, CodeSent,
              ExecutionStarted, Output, ExecutionFinished, ConnectionProblem]
Listener = Callable[[Event], None]
