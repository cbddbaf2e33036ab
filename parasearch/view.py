"""What a person sees while a search runs: completed/running/failed of N, the best objective
with its parameters, rate and ETA, live on a terminal, a plain line every few seconds
otherwise, or JSON events (`--json`) for scripts; a summary at the end."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Awaitable

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from liborchestra import events
from liborchestra.engine import Engine
from liborchestra.journal import Journal
from parasearch.search import SearchSettings, SearchSource, TrialRecorded
from runaway.progress import _as_json, _clock, run_refreshing

REFRESH = 0.5


class SearchView:
    def __init__(self, journal: Journal, engine: Engine, source: SearchSource,
                 settings: SearchSettings, json_mode: bool, console: Console) -> None:
        self.journal, self.engine, self.source, self.settings = journal, engine, source, settings
        self.console = console
        self.mode = "json" if json_mode else "live" if sys.stderr.isatty() else "plain"
        self.start = time.monotonic()
        self._done: deque[tuple[float, int]] = deque(maxlen=120)
        self._live: Live | None = None
        self._last_line = 0.0

    def event(self, event: events.Event | object) -> None:
        if self.mode == "json":
            print(json.dumps(_as_json(event)), flush=True)  # type: ignore[arg-type]
        elif isinstance(event, TrialRecorded) and event.problem and event.state == "failed":
            self.console.print(f"[dim]parasearch: trial {escape(event.uuid[:8])} failed: "
                               f"{escape(event.problem)}[/dim]")

    def __enter__(self) -> SearchView:
        if self.mode == "live":
            self._live = Live(self._line(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._line())
            self._live.__exit__(*exc)

    async def run_beside(self, work: Awaitable) -> object:
        """Run `work`, refreshing the view meanwhile."""
        return await run_refreshing(self._refresh, work, REFRESH)

    def _refresh(self) -> None:
        self._done.append((time.monotonic(), self.source.completed()))
        if self._live is not None:
            self._live.update(self._line())
        elif self.mode == "plain" and time.monotonic() - self._last_line >= 5:
            self._last_line = time.monotonic()
            self.console.print(self._line(), highlight=False)

    def _rate(self) -> float:
        if len(self._done) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._done[0], self._done[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _line(self) -> Text:
        counts = self.journal.counts()
        done, n = self.source.completed(), self.settings.n
        rate = self._rate()
        eta = "-" if done >= n else (_clock((n - done) / rate) if rate > 0 else "?")
        best = self.source.sampler.best
        shown = "" if best is None else \
            f"   best {best.value:.6g} at " + " ".join(f"{k}={v:.4g}" if isinstance(v, float)
                                                     else f"{k}={v}"
                                                     for k, v in sorted(best.params.items()))
        return Text.assemble(
            ("completed ", "bold"), (f"{done} of {n}  ", "green"),
            ("running ", "bold"), (f"{counts.get('running', 0)}  ", "cyan"),
            ("failed ", "bold"), (f"{counts.get('failed', 0)}  ", "red"),
            (f"{rate:.2f}/s  eta {eta}  elapsed {_clock(time.monotonic() - self.start)}", "dim"),
            (shown, ""))

    def summary(self) -> None:
        best = self.source.sampler.best
        if self.mode == "json":
            print(json.dumps({"event": "summary", "completed": self.source.completed(),
                              "best": None if best is None else
                              {"objective": best.value, "params": best.params},
                              "seconds": time.monotonic() - self.start}), flush=True)
            return
        self.console.print(self._line(), highlight=False)

