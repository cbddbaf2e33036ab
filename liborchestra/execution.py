"""Execution (what to run) and Result (what happened)."""

from __future__ import annotations

import enum
import shlex
import uuid as uuidlib
from pathlib import Path

import attrs


class State(str, enum.Enum):
    """Where an execution is: the one vocabulary of the engine, the journal and the views.
    `lost` means the infrastructure failed it, not the script."""

    QUEUED = "queued"  # recorded, not handed to the engine yet
    SUBMITTED = "submitted"  # handed to the engine (run id recorded), waiting for a slot
    RUNNING = "running"  # placed on a slot (node, slot and allocation recorded)
    COMPLETED = "completed"  # the script ran and exited 0
    FAILED = "failed"  # the script ran and exited non-zero
    LOST = "lost"  # the connection, node or allocation died and the exit code is unknown
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (State.COMPLETED, State.FAILED, State.LOST, State.CANCELLED)


def _new_uuid() -> str:
    return str(uuidlib.uuid4())


@attrs.frozen
class Execution:
    """One run of a script with its arguments. Arguments are data: they reach argv verbatim."""

    script: Path = attrs.field(converter=Path)
    args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    code: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    """The folder shipped; by default the script's folder."""
    output: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    """Where results land locally; None: only the exit code and output are fetched."""
    uuid: str = attrs.field(factory=_new_uuid)
    duration: float | None = None  # expected seconds, for walltime-aware placement
    env: tuple[tuple[str, str], ...] = ()
    stream: bool = False  # forward stdout/stderr live as events
    ship: tuple[tuple[str, Path], ...] = ()  # extra folders shipped with the code, by name

    @property
    def code_dir(self) -> Path:
        return (self.code or self.script.parent).resolve()

    @property
    def arguments(self) -> str:
        """The arguments as one shell-quoted string (RUNAWAY_ARGUMENTS)."""
        return shlex.join(self.args)


@attrs.frozen
class Result:
    execution: Execution
    state: State
    ecode: int | None = None
    node: str | None = None
    slot: str | None = None
    output: Path | None = None
    started: float | None = None
    finished: float | None = None
    message: str = ""  # why an execution was lost or cancelled
    node_down: bool = False  # lost because its node could not be reached at all

    @property
    def ok(self) -> bool:
        return self.state is State.COMPLETED
