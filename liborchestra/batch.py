"""Batch: a sweep of executions, journaled at creation and driven by the shared loop.

The whole sweep is written to the journal when the batch is created (streamed, so memory
stays bounded for any size); the driver (driver.py) pages through it, keeping a window of
executions in flight, and owns retries, requeues, the canary, recovery, drain and cancel. What
is the batch's own: how a row becomes an execution, and the local post-command run in each
output folder after fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import attrs

from liborchestra.driver import CanaryFailed, Driver, Source
from liborchestra.engine import Engine
from liborchestra.execution import Execution, Result
from liborchestra.journal import Journal, Row
from liborchestra.results import read_metrics, record, write_record
from liborchestra.transfer import OUTPUT_MARKER

__all__ = ["BatchSettings", "CanaryFailed", "PostCommandFailed", "PostOutputCapped",
           "SweepSource", "POST_ENV_LIMIT", "keep_attempt"]

POST_ENV_LIMIT = 64 * 1024  # bytes of stdout/stderr put in the post-command's environment


@attrs.frozen
class BatchSettings:
    script: Path
    output: Path  # batch folder: one sub-folder per execution
    code: Path | None = None
    post_command: str | None = None
    duration: float | None = None
    env: tuple[tuple[str, str], ...] = ()
    ship: tuple[tuple[str, Path], ...] = ()  # extra folders (e.g. --configs) shipped by name


@attrs.frozen
class PostCommandFailed:
    """A local post-command exited non-zero (an event; the batch goes on)."""

    uuid: str
    status: int


@attrs.frozen
class PostOutputCapped:
    """An output was too large for the post-command's environment: it got the last
    `limit` bytes there, and the whole file by path (RUNAWAY_STDOUT_PATH...)."""

    uuid: str
    stream: str
    size: int
    limit: int


class SweepSource(Source):
    """The rows of a sweep, already in the journal. `done` runs the post-command, keeps the
    metrics and the post-command's status in the row's payload (so every reader of the
    journal sees them), writes the folder's record file and returns the objective."""

    def __init__(self, engine: Engine, settings: BatchSettings) -> None:
        self.engine, self.settings = engine, settings
        self.journal: Journal | None = None

    @contextlib.asynccontextmanager
    async def open(self, driver: Driver) -> AsyncIterator[None]:
        self.journal = driver.journal
        yield

    def execution(self, row: Row, run_id: str) -> Execution:
        s = self.settings
        output = s.output / row.uuid
        # A row never run has no attempt to keep; else `row` may predate the last attempt.
        if self.journal is not None and (row.run is not None or run_id != row.uuid):
            current = self.journal.get(row.seq)
            if run_id != current.run:  # a new attempt, not a recovery of the current one
                keep_attempt(self.journal, current, output)
        return Execution(script=s.script, args=row.argv, code=s.code, uuid=run_id,
                         output=output, duration=s.duration, env=s.env, ship=s.ship)

    async def done(self, row: Row, result: Result) -> float | None:
        folder = result.output
        if folder is None:
            return None
        status = None
        present = os.path.isdir(folder)  # once per execution (again after a post-command)
        if self.settings.post_command and present:
            status = await self._post(row, folder, result.ecode)
            present = os.path.isdir(folder)
        metrics = read_metrics(folder) if present else None
        payload = dict(row.payload)  # `row` is read afresh by the driver, history and all
        if metrics is not None:
            payload.update(objective=metrics.objective, metrics=metrics.values)
        if status is not None:
            payload["post"] = status
        if self.journal is not None and payload != row.payload:
            self.journal.update_payload(row.seq, payload, commit=False)  # with `recorded`
        if present:
            write_record(folder, record(row, script=str(self.settings.script),
                                        post=status, attempt_history=payload.get("history", [])))
        return None if metrics is None else metrics.objective

    async def _post(self, row: Row, folder: Path, ecode: int | None) -> int:
        """The original's variables (RUNAWAY_STDOUT/STDERR hold the output, capped), the
        paths of the whole files, and a process group killed on cancellation."""
        env = {**os.environ, "RUNAWAY_ECODE": "" if ecode is None else str(ecode),
               "RUNAWAY_OUTPUT_FOLDER": str(folder), "RUNAWAY_UUID": row.uuid,
               "RUNAWAY_ARGUMENTS": row.label}
        for stream in ("stdout", "stderr"):
            path = folder / stream
            text, size = _capped(path, POST_ENV_LIMIT)
            env[f"RUNAWAY_{stream.upper()}"] = text
            env[f"RUNAWAY_{stream.upper()}_PATH"] = str(path)
            env[f"RUNAWAY_{stream.upper()}_TRUNCATED"] = "1" if size > POST_ENV_LIMIT else "0"
            if size > POST_ENV_LIMIT:
                self.engine.emit(PostOutputCapped(row.uuid, stream, size, POST_ENV_LIMIT))  # type: ignore[arg-type]
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", self.settings.post_command, cwd=folder, env=env,
            start_new_session=True)
        try:
            status = await proc.wait()
        except BaseException:  # cancelled: the post-command and its children go too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            raise
        if status != 0:
            self.engine.emit(PostCommandFailed(row.uuid, status))  # type: ignore[arg-type]
        return status


def keep_attempt(journal: Journal, row: Row, folder: Path) -> int | None:
    """Move a finished attempt's files aside to `folder/attempts/N/` before the next attempt
    overwrites them, and add it (run, code digest, exit code, times) to the row's `history`.
    Returns N, or None when the folder holds no finished attempt."""
    if not (folder / "ecode").is_file():
        return None
    history = list(row.payload.get("history", []))
    number = len(history) + 1
    while (folder / "attempts" / str(number)).exists():
        number += 1
    target = folder / "attempts" / str(number)
    target.mkdir(parents=True)
    for entry in folder.iterdir():
        if entry.name not in ("attempts", OUTPUT_MARKER):
            entry.rename(target / entry.name)
    ecode = (target / "ecode").read_text().strip()
    history.append({"attempt": number, "run": row.run, "digest": row.digest,
                    "ecode": int(ecode) if ecode.lstrip("-").isdigit() else None,
                    "node": row.node, "started": row.started, "finished": row.finished,
                    "folder": f"attempts/{number}"})
    journal.update_payload(row.seq, {**row.payload, "history": history})
    return number


def _capped(path: Path, limit: int) -> tuple[str, int]:
    """The last `limit` bytes of a file (cut at a line start when it can), and its size."""
    if not path.is_file():
        return "", 0
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - limit))
        data = f.read()
    if size > limit and b"\n" in data:
        data = data[data.index(b"\n") + 1:]
    return data.decode(errors="replace").replace("\0", ""), size
