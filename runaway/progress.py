"""Progress of a batch for people (a rich live view, or plain lines when not a terminal) and
for scripts (`--json`: one JSON object per line). Counts come from the journal, so the view
costs the same for 100 or 100,000 executions."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import attrs
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from liborchestra import driver, events
from liborchestra.batch import PostCommandFailed, PostOutputCapped
from liborchestra.engine import Engine
from liborchestra.execution import State
from liborchestra.federation import ClusterDown, Federation
from liborchestra.journal import Journal
from runaway.render import agent_note, code_note

T = TypeVar("T")

# the one vocabulary of states (liborchestra.execution.State), in the order a view shows them
STATES = tuple(s.value for s in (State.COMPLETED, State.FAILED, State.LOST, State.RUNNING,
                                 State.SUBMITTED, State.QUEUED, State.CANCELLED))
JSON_DELAY = 0.01  # seconds `--json` lines wait for the others of that time (see `_json`)
PIPE_BUF = 4096  # bytes a pipe takes whole: a post-command writing there cannot cut a line


class Progress:
    def __init__(self, journal: Journal, engine: Engine | Federation, mode: str,
                 console: Console) -> None:
        self.journal, self.engine, self.mode, self.console = journal, engine, mode, console
        self.start = time.monotonic()
        self._done: deque[tuple[float, int]] = deque(maxlen=120)
        self._live: Live | None = None
        self._last_line = 0.0
        self.total = sum(journal.counts().values())
        self._said: set[str] = set()
        self._entered = False
        self._lines: list[str] = []  # --json lines not yet written

    def event(self, event: events.Event) -> None:
        if self.mode == "json":
            self._json(json.dumps(_as_json(event)))
            return
        text = self._notable(event)
        if text:
            self.console.print(f"[dim]runaway: {escape(text)}[/dim]", highlight=False)

    def _json(self, line: str) -> None:
        """While the view is entered, the lines of JSON_DELAY seconds leave in one write:
        each write wakes whatever reads them, two per execution, and is a system call here."""
        self._lines.append(line)
        if not self._entered:
            self._flush()
        elif len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_later(JSON_DELAY, self._flush)
            except RuntimeError:  # no event loop here to write them later
                self._flush()

    def _flush(self) -> None:
        """The waiting lines, in writes of whole lines of at most PIPE_BUF bytes."""
        lines, self._lines = self._lines, []
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) + 1 > PIPE_BUF:
                _write("".join(chunk))
                chunk, size = [], 0
            chunk.append(line + "\n")
            size += len(line) + 1
        if chunk:
            _write("".join(chunk))

    def _notable(self, event: object) -> str | None:
        """What a person should read about, once, beside the counts."""
        if isinstance(event, PostOutputCapped):
            if event.stream in self._said:
                return None
            self._said.add(event.stream)
            name = f"RUNAWAY_{event.stream.upper()}"
            return (f"post-command: {event.stream} of {event.uuid[:8]} is {event.size} bytes; "
                    f"{name} holds its last {event.limit // 1024} KiB and {name}_PATH the "
                    "whole file (said once)")
        if code_note(event) or agent_note(event):
            return code_note(event) or agent_note(event)
        if isinstance(event, PostCommandFailed):
            return f"post-command of {event.uuid[:8]} exited {event.status}"
        if isinstance(event, events.AllocationRefused):
            then = f"asking again in {event.retry_in:.0f} s" if event.retry_in is not None \
                else "the waiting executions fail"
            return f"allocation refused: {event.message}; {then}"
        if isinstance(event, ClusterDown):
            return (f"warning: cluster {event.cluster} cannot take work ({event.message}); "
                    "the executions go on on the other clusters")
        if isinstance(event, driver.RecoveryWaiting):
            return f"{event.node} unreachable while recovering {event.uuid[:8]}: {event.message}"
        if isinstance(event, driver.RunFenced):
            return (f"gave up on {event.run} on {event.node} (unreachable): it runs again, and "
                    "what it reports later is ignored")
        if isinstance(event, driver.RecordFailed):
            return f"recording {event.uuid[:8]} failed: {event.message}"
        return None

    def __enter__(self) -> Progress:
        self._entered = True
        if self.mode == "live":
            self._live = Live(self._view(), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._entered = False
        self._flush()
        if self._live is not None:
            self._live.update(self._view())
            self._live.__exit__(*exc)

    def refresh(self) -> None:
        """Called twice a second by the driver. Not for `--json`, which shows no counts: on a
        100,000-row journal they cost 4.7 ms each."""
        if self.mode == "json":
            return
        counts = self.journal.counts()
        finished = counts.get("completed", 0) + counts.get("failed", 0) + counts.get("lost", 0)
        self._done.append((time.monotonic(), finished))
        if self._live is not None:
            self._live.update(self._view(counts))
        elif self.mode == "plain" and time.monotonic() - self._last_line >= 5:
            self._last_line = time.monotonic()
            self.console.print(self._line(counts), highlight=False)

    def rate(self) -> float:
        if len(self._done) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._done[0], self._done[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _eta(self, counts: dict[str, int]) -> str:
        left = counts.get("queued", 0) + counts.get("running", 0) + counts.get("submitted", 0)
        rate = self.rate()
        if not left:
            return "-"
        return _clock(left / rate) if rate > 0 else "?"

    def _line(self, counts: dict[str, int]) -> str:
        slots = self.engine.slots
        parts = [f"{s} {counts.get(s, 0)}" for s in STATES if counts.get(s)]
        return (f"[{_clock(time.monotonic() - self.start)}] {', '.join(parts)} of {self.total}; "
                f"slots {slots.busy()}/{slots.total()}; {self.rate():.1f}/s; "
                f"eta {self._eta(counts)}")

    def _view(self, counts: dict[str, int] | None = None):
        counts = counts if counts is not None else self.journal.counts()
        now = time.monotonic()
        allocations = Table.grid(padding=(0, 2))
        loop = anyio.current_time()  # allocations' deadlines are on the event loop's clock
        for allocation in self.engine.allocator.live.values():
            left = "" if allocation.ends_at is None else _clock(allocation.ends_at - loop)
            nodes = ", ".join(n.name for n in allocation.nodes)
            allocations.add_row(f"allocation {allocation.id}", nodes,
                                f"{allocation.slots} slots", f"{left} left" if left else "")
        if self.engine.allocator.pending:
            allocations.add_row("allocation", "pending", "", "")
        slots = self.engine.slots
        bar = Text.assemble(
            ("done ", "bold"), (f"{counts.get('completed', 0)} ", "green"),
            ("failed ", "bold"), (f"{counts.get('failed', 0)} ", "red"),
            ("lost ", "bold"), (f"{counts.get('lost', 0)} ", "yellow"),
            ("running ", "bold"), (f"{counts.get('running', 0)} ", "cyan"),
            ("waiting ", "bold"), (f"{counts.get('submitted', 0)} ", ""),
            ("queued ", "bold"), (f"{counts.get('queued', 0)} ", ""),
            (f"of {self.total}   slots {slots.busy()}/{slots.total()}   "
             f"{self.rate():.1f}/s   eta {self._eta(counts)}   "
             f"elapsed {_clock(now - self.start)}", "dim"))
        return Group(allocations, bar)

    def summary(self, failures: list[tuple[str, str]], name: str | None = None,
                post_failed: int = 0) -> None:
        counts = self.journal.counts()
        elapsed = time.monotonic() - self.start
        if self.mode == "json":
            self._flush()
            print(json.dumps({"event": "summary", "name": name, "counts": counts,
                              "post_failed": post_failed, "seconds": elapsed}), flush=True)
            return
        table = Table(title=f"batch {name} summary" if name else "batch summary")
        for column in ("state", "executions"):
            table.add_column(column)
        for state in STATES:
            if counts.get(state):
                table.add_row(state, str(counts[state]))
        if post_failed:
            table.add_row("post-command failed", str(post_failed))
        table.add_row("elapsed", _clock(elapsed))
        self.console.print(table)
        if name:
            self.console.print(f"[dim]runaway: batch {escape(name)}: `runaway results "
                               f"{escape(name)}` for one row per execution[/dim]",
                               highlight=False)
        for label, detail in failures[:10]:
            self.console.print(f"[red]failed[/red] {label}: {detail}", highlight=False)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _as_json(event: events.Event) -> dict:
    data = {"event": type(event).__name__}
    for field in attrs.fields(type(event)):
        value = getattr(event, field.name)
        if field.name == "result":
            value = {"uuid": value.execution.uuid, "state": value.state.value,
                     "ecode": value.ecode, "node": value.node, "slot": value.slot,
                     "message": value.message}
        elif isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, tuple):
            value = list(value)
        data[field.name] = value
    return data


def mode_for(json_output: bool) -> str:
    if json_output:
        return "json"
    return "live" if sys.stderr.isatty() else "plain"


async def run_refreshing(refresh: Callable[[], object], work: Awaitable[T],
                         interval: float = 0.5) -> T:
    """Await `work` while calling `refresh` every `interval` seconds (the live views)."""
    async with anyio.create_task_group() as tg:
        async def loop() -> None:
            while True:
                refresh()
                await anyio.sleep(interval)

        tg.start_soon(loop)
        result = await work
        tg.cancel_scope.cancel()
    return result
