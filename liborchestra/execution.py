"""Execution (what to run) and Result (what happened)."""

from __future__ import annotations

import enum
import functools
import os
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


def _path(value: object) -> Path:
    """A Path, made only when it is not one already: executions are copied (`attrs.evolve`)
    several times each, and parsing a path again is most of a copy's cost."""
    return value if isinstance(value, Path) else Path(value)  # type: ignore[arg-type]


def _optional_path(value: object) -> Path | None:
    return None if value is None else _path(value)


def _arguments(values: object) -> tuple[str, ...]:
    """Arguments as strings: numbers and paths are converted with str; anything else is one
    clear TypeError now, not a traceback from deep inside a launch."""
    if type(values) is tuple and all(type(value) is str for value in values):
        return values  # already arguments (a copy of an execution)
    if isinstance(values, (str, bytes)):
        raise TypeError(f"Execution args: expected a list of arguments, got the string "
                        f"{values!r} (write [{values!r}], or split it)")
    try:
        items = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"Execution args: expected a list of arguments, got "
                        f"{type(values).__name__}") from None
    out = []
    for position, value in enumerate(items):
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(str(value))
        elif isinstance(value, os.PathLike):
            out.append(os.fspath(value))
        else:
            raise TypeError(f"Execution args: argument {position} is {type(value).__name__} "
                            f"{value!r}; expected a str or a number")
    return tuple(out)


ARGUMENTS_LIMIT = 32 * 4096 - len("RUNAWAY_ARGUMENTS=") - 1  # Linux's longest string in an
# environment (MAX_ARG_STRLEN, its NUL included) with 4 KiB pages, the smallest: the nodes'
# pages are not known here (64 KiB ones allow more); each argument is bounded by it too


def arguments_problem(args: tuple[str, ...]) -> str | None:
    """Why a script could not be started with these arguments, or None: RUNAWAY_ARGUMENTS
    (all of them, shell-quoted) is one string of the environment, and the kernel refuses
    longer ones (`Argument list too long`)."""
    size = len(shlex.join(args).encode())
    if size <= ARGUMENTS_LIMIT:
        return None
    return (f"its arguments are {size:,} bytes once quoted (RUNAWAY_ARGUMENTS), over the "
            f"{ARGUMENTS_LIMIT:,} the kernel takes in one variable: pass large data in a file "
            "(shipped with the code) and its path as the argument")


@attrs.frozen
class Execution:
    """One run of a script with its arguments. Arguments are data: they reach argv verbatim."""

    script: Path = attrs.field(converter=_path)
    args: tuple[str, ...] = attrs.field(default=(), converter=_arguments)
    code: Path | None = attrs.field(default=None, converter=_optional_path)
    """The folder shipped; by default the script's folder."""
    output: Path | None = attrs.field(default=None, converter=_optional_path)
    """Where results land locally; None: only the exit code and output are fetched."""
    uuid: str = attrs.field(factory=_new_uuid)
    duration: float | None = None  # expected seconds, for walltime-aware placement
    env: tuple[tuple[str, str], ...] = ()
    stream: bool = False  # forward stdout/stderr live as events
    ship: tuple[tuple[str, Path], ...] = ()  # extra folders shipped with the code, by name

    @property
    def code_dir(self) -> Path:
        return _resolved(self.code or self.script.parent)

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
    stdout: str = attrs.field(default="", repr=False)  # the last TAIL bytes of its stdout
    stderr: str = attrs.field(default="", repr=False)  # the last TAIL bytes of its stderr
    # started/finished are epoch seconds (wall clock), like the journal's

    @property
    def ok(self) -> bool:
        return self.state is State.COMPLETED

    @property
    def stdout_path(self) -> Path | None:
        """The whole stdout, when the results were fetched into a folder."""
        return None if self.output is None else self.output / "stdout"

    @property
    def stderr_path(self) -> Path | None:
        return None if self.output is None else self.output / "stderr"


TAIL = 64 * 1024  # bytes of stdout/stderr a Result keeps


def tail(path: Path, limit: int = TAIL) -> str:
    """The last `limit` bytes of a file as text ("" when there is none)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


@functools.lru_cache(maxsize=64)
def _resolved(folder: Path) -> Path:
    """Every execution of a batch asks for its code folder: resolved once, not a syscall per
    path component each time."""
    return folder.resolve()
