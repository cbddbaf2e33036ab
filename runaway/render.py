"""Rendering engine events for people: script output verbatim, the rest as dim status lines."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from liborchestra import events
from liborchestra.check import CheckLine
from liborchestra.execution import Result, State
from liborchestra.transfer import CODE_CACHE_KEEP, OUTPUT_MARKER, CodeLarge, CodeLeftOut, CodePruned


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
        elif isinstance(event, events.ConnectionProblem):  # the message may name it already
            message = event.message.removeprefix(f"{event.host}: ")
            self.note(f"{event.host}: {message}; recovering")
        elif code_note(event) or agent_note(event):
            self.note(code_note(event) or agent_note(event) or "")
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


def size(count: float) -> str:
    """Bytes for people: 512 B, 3.2 kB, 41.0 MB, 1.3 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def agent_note(event: object) -> str | None:
    """A node without its agent: slower, not broken; said once per node by the engine."""
    if isinstance(event, events.AgentUnavailable):
        return (f"{event.node}: no node agent ({event.reason}); executions there use the shell "
                "wrapper: same results, more processes per execution")
    return None


def code_note(event: object) -> str | None:
    """What to tell about the code shipped: what was left out, a large archive, pruning."""
    if isinstance(event, CodeLeftOut):
        return (f"left out of the code shipped (results folders, marked {OUTPUT_MARKER}): "
                f"{_folders(event.folders)}; delete the marker file to ship one")
    if isinstance(event, CodeLarge):
        biggest = ", ".join(f"{path} {size(n)}" for path, n in event.biggest)
        return (f"warning: shipping {size(event.size)} of code ({event.files} files); biggest: "
                f"{biggest}. List what the runs do not need in .sendignore (globs, one a line)")
    if isinstance(event, CodePruned):
        total = sum(n for _, n in event.removed)
        return (f"code cache on {event.filesystem}: removed {len(event.removed)} older "
                f"archive(s) ({size(total)}); it keeps the {CODE_CACHE_KEEP} most recently "
                "used (`runaway clean PROFILE` lists them)")
    return None


def _folders(paths: tuple[str, ...], limit: int = 3) -> str:
    """Folders, with many siblings summed up as `parent/* (N folders)`."""
    by_parent: dict[str, list[str]] = {}
    for path in paths:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        by_parent.setdefault(parent, []).append(path)
    parts = []
    for parent, children in by_parent.items():
        if parent and len(children) > limit:
            parts.append(f"{parent}/* ({len(children)} folders)")
        else:
            parts += [f"{c}/" for c in children]
    return ", ".join(parts)
