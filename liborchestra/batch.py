"""Batch: drives a journaled sweep of executions through an engine.

The journal holds the whole sweep; the driver pages through it and keeps only a window of
executions in flight (about twice the live slots), so memory grows with running executions,
not with the batch size. A failed execution (exit code != 0) is retried up to `retries` times;
one lost to the infrastructure (dead connection, node or allocation) is requeued up to
`crash_limit` times without touching the retry budget. `drain()` stops taking new work and
lets running executions finish; cancellation puts running ones back in the queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import anyio
import attrs

from liborchestra import events
from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution, Result, State
from liborchestra.journal import Journal, Row, iter_chunks

log = logging.getLogger(__name__)


class CanaryFailed(OrchestraError):
    """The first executions failed: the rest of the batch was not started."""


@attrs.frozen
class BatchSettings:
    script: Path
    output: Path  # batch folder: one sub-folder per execution
    code: Path | None = None
    retries: int = 0
    crash_limit: int = 3
    canary: int = 0
    post_command: str | None = None
    duration: float | None = None
    env: tuple[tuple[str, str], ...] = ()
    ship: tuple[tuple[str, Path], ...] = ()  # extra folders (e.g. --configs) shipped by name


@attrs.frozen
class PostCommandFailed:
    """A local post-command exited non-zero (an event; the batch goes on)."""

    uuid: str
    status: int


class Batch:
    def __init__(self, engine: Engine, journal: Journal, settings: BatchSettings) -> None:
        self.engine, self.journal, self.settings = engine, journal, settings
        self._running: dict[str, Row] = {}  # run id -> row, for placement events
        self._draining = False
        self._changed = anyio.Condition()
        self._inflight = 0
        engine.listeners.append(self._on_event)

    def drain(self) -> None:
        """Stop starting executions; those running finish and are fetched."""
        self._draining = True
        self.engine.drain()

    async def run(self) -> dict[str, int]:
        """Recover what an earlier driver left running, run the canary, then the rest."""
        await self._recover()
        if self.settings.canary:
            await self._run_rows(self.journal.pending(0, self.settings.canary))
            failed = [r for r in self.journal.rows(limit=self.settings.canary)
                      if r.state in ("failed", "lost")]
            if failed:
                raise CanaryFailed(_canary_message(failed, self.settings.output))
        await self._run_rows(iter_chunks(self.journal))
        return self.journal.counts()

    async def _run_rows(self, rows) -> None:
        async with anyio.create_task_group() as tg:
            for row in rows:
                if self._draining:
                    break
                async with self._changed:
                    while self._inflight >= self._window() and not self._draining:
                        await self._changed.wait()
                if self._draining:
                    break
                self._inflight += 1
                tg.start_soon(self._one, row)

    def _window(self) -> int:
        return max(16, 2 * self.engine.slots.total())

    async def _one(self, row: Row) -> None:
        attempts, lost = row.attempts, row.lost
        try:
            while True:
                run_id = row.uuid if attempts == 0 else f"{row.uuid}.{attempts}"
                self.journal.started(row.seq, run_id)
                attempts += 1
                self._running[run_id] = row
                try:
                    result = await self.engine.submit(self._execution(row, run_id))
                finally:
                    self._running.pop(run_id, None)
                if result.state is State.CANCELLED and self._draining:
                    self.journal.finished(row.seq, "queued", None, "drained")
                    return
                if result.state is State.LOST and lost < self.settings.crash_limit:
                    lost += 1
                    self.journal.finished(row.seq, "running", None, result.message, lost=True)
                    continue
                if result.state is State.FAILED and attempts <= self.settings.retries:
                    self.journal.finished(row.seq, "running", result.ecode, "retrying")
                    continue
                await self._record(row, result)
                return
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):  # interrupted: runs again on resume
                self.journal.finished(row.seq, "queued", None, "interrupted")
            raise
        finally:
            async with self._changed:
                self._inflight -= 1
                self._changed.notify_all()

    def _execution(self, row: Row, run_id: str) -> Execution:
        s = self.settings
        return Execution(script=s.script, args=row.argv, code=s.code, uuid=run_id,
                         output=s.output / row.uuid, duration=s.duration, env=s.env,
                         ship=s.ship)

    async def _record(self, row: Row, result: Result) -> None:
        state = {State.COMPLETED: "completed", State.FAILED: "failed",
                 State.CANCELLED: "cancelled"}.get(result.state, "lost")
        self.journal.finished(row.seq, state, result.ecode, result.message,
                              lost=result.state is State.LOST)
        if self.settings.post_command and result.output is not None:
            await self._post(row, result)

    async def _post(self, row: Row, result: Result) -> None:
        folder = result.output
        env = {**os.environ, "RUNAWAY_ECODE": str(result.ecode if result.ecode is not None else ""),
               "RUNAWAY_STDOUT": (folder / "stdout").read_text(errors="replace"),
               "RUNAWAY_STDERR": (folder / "stderr").read_text(errors="replace"),
               "RUNAWAY_OUTPUT_FOLDER": str(folder), "RUNAWAY_UUID": row.uuid,
               "RUNAWAY_ARGUMENTS": row.label}
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", self.settings.post_command, cwd=folder, env=env)
        status = await proc.wait()
        if status != 0:
            self.engine.emit(PostCommandFailed(row.uuid, status))  # type: ignore[arg-type]

    async def _recover(self) -> None:
        """Runs left `running` by a driver that died: fetch their results if they finished
        remotely (or wait for them), else put them back in the queue."""
        rows = self.journal.in_flight()
        if not rows:
            return

        async def one(row: Row) -> None:
            result = None
            if row.run and row.node:
                execution = self._execution(row, row.run)
                result = await self.engine.recover(execution, row.node, row.slot)
            if result is None or result.state is State.LOST:
                self.journal.finished(row.seq, "queued", None, "requeued on resume")
            else:
                await self._record(row, result)

        limiter = anyio.CapacityLimiter(32)

        async def limited(row: Row) -> None:
            async with limiter:
                await one(row)

        async with anyio.create_task_group() as tg:
            for row in rows:
                tg.start_soon(limited, row)
        for allocation in self.journal.live_allocations():
            await self.engine.release_stale(allocation)
            self.journal.allocation(allocation, "released", "left by an earlier driver")

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.ExecutionStarted):
            row = self._running.get(event.uuid)
            if row is not None:
                self.journal.placed(row.seq, event.node, event.slot)
        elif isinstance(event, events.AllocationGranted):
            self.journal.allocation(event.allocation, "granted")
        elif isinstance(event, events.AllocationReleased):
            self.journal.allocation(event.allocation, "released", event.reason)


def _canary_message(failed: list[Row], output: Path) -> str:
    lines = []
    for row in failed[:5]:
        stderr = output / row.uuid / "stderr"
        tail = stderr.read_text(errors="replace").strip().splitlines()[-3:] \
            if stderr.is_file() else []
        why = f"exit {row.ecode}" if row.state == "failed" else (row.message or "lost")
        lines.append(f"#{row.seq} [{row.label}] {why}" + (f": {' | '.join(tail)}" if tail else ""))
    return (f"canary: {len(failed)} of the first executions failed; the rest was not started. "
            + "; ".join(lines))
