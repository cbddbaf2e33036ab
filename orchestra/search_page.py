"""A search's page: the figures of `parasearch report` (parasearch.report.figures over
parasearch.trials), sent as plotly JSON and pushed again over server-sent events whenever a
trial ends, so the plots gain points without a reload."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import anyio
import plotly
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from orchestra import records
from orchestra.discovery import Entry
from orchestra.live import event_stream
from orchestra.pages import _run_info, entry_of, render
from parasearch.report import figures
from parasearch.trials import ranked, trials

TOP = 10


def _search_entry(request: Request) -> Entry:
    entry = entry_of(request)
    if entry.kind != "search":
        raise records.NotFound(f"{entry.name!r} is a {entry.kind}, not a search")
    return entry


def _data(entry: Entry) -> dict:
    """Everything the page draws: counts, the best trials, the figures as plotly JSON."""
    with records.opened(entry.path) as journal:
        summary = records.summary(journal, entry.kind)
        rows = trials(journal)
    maximize = bool(summary.meta.get("maximize"))
    best = ranked(rows, maximize)[:TOP]
    return {
        "counts": summary.counts, "total": summary.total, "alive": summary.alive,
        "completed": sum(1 for r in rows if r.state == "completed" and r.value is not None),
        "n": summary.meta.get("n"),
        "best": [{"trial": r.seq, "value": r.value, "params": r.params, "node": r.node}
                 for r in best],
        "figures": {name: json.loads(fig.to_json())
                    for name, fig in figures(rows, maximize).items()},
    }


async def search(request: Request) -> Response:
    entry = _search_entry(request)
    with records.opened(entry.path) as journal:
        summary = records.summary(journal, entry.kind)
    return render(request, "search.html", entry=entry, summary=summary,
                  **_run_info(request, entry))


async def data(request: Request) -> Response:
    entry = _search_entry(request)
    return JSONResponse(await anyio.to_thread.run_sync(_data, entry))


async def events(request: Request) -> Response:
    entry = _search_entry(request)

    def fingerprint() -> object:
        with records.opened(entry.path) as journal:
            return records.last_change(journal)

    def payload() -> dict:
        out = _data(entry)
        out["alive"] = out["alive"] or request.app.state.runs.driving(entry.path)
        return out

    return event_stream(fingerprint, payload)


@lru_cache(maxsize=1)
def _plotly_source() -> bytes:
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path.read_bytes()


async def plotly_js(request: Request) -> Response:
    """plotly.js as the plotly package ships it: served from here, no CDN, no build step."""
    return Response(_plotly_source(), media_type="text/javascript",
                    headers={"cache-control": "max-age=86400"})
