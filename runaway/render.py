"""Rendering engine events for people: script output verbatim, the rest as dim status lines."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from liborchestra import events
from liborchestra.check import CheckLine
from liborchestra.execution import Result, State


class Renderer:
    def __init__(self, verbose: bool = False, prog: str = "runaway") -> None:
        self.verbose, self.prog = verbose, prog
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{self.prog}: {escape(text)}[/dim]")

    def error(self, text: str) -> None:
        self.console.print(f"[bold red]{self.prog}: error:[/bold red] {escape(text)}")

    def event(self, event: events.Event) -> None:
        if isinstance(event, events.Output):
            stream = sys.stdout if event.stream == "stdout" else sys.stderr
            stream.buffer.write(event.data)
            stream.flush()
        elif isinstance(event, events.ConnectionProblem):
            self.note(f"{event.host}: {event.message}; recovering")
        elif self.verbose:
            self.note(_describe(event))

    def finished(self, result: Result) -> None:
        if result.state is State.LOST:
            self.error(f"execution lost: {result.message}")
        elif result.output is not None:
            self.note(f"{result.state.value} (exit {result.ecode}) on {result.node} slot "
                      f"{result.slot}; results in {result.output}")

    def check(self, line: CheckLine) -> None:
        mark = "[green]ok  [/green]" if line.ok else "[bold red]FAIL[/bold red]"
        detail = f"  {escape(line.detail)}" if line.detail else ""
        self.console.print(f"{mark} {escape(line.step):<28} {line.seconds:6.2f}s{detail}")


def _describe(event: events.Event) -> str:
    if isinstance(event, events.AllocationGranted):
        return f"allocation {event.allocation}: {', '.join(event.nodes)} ({event.slots} slots)"
    if isinstance(event, events.CodeSent):
        return f"code {event.digest[:12]} sent to {event.filesystem} ({event.size} bytes)"
    if isinstance(event, events.ExecutionStarted):
        return f"started {event.uuid} on {event.node} slot {event.slot}"
    if isinstance(event, events.ExecutionFinished):
        return f"finished {event.result.execution.uuid}: {event.result.state.value}"
    return repr(event)
