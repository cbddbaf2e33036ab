"""A search's page: the figures of `parasearch report` (parasearch.report.figures over
parasearch.trials), sent as plotly JSON and pushed again over server-sent events whenever a
trial ends, so the plots gain points without a reload."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import anyio
import plotly
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from orchestra import records, searches
from orchestra.discovery import Entry
from orchestra.live import event_stream
from orchestra.pages import _run_info, entry_of, render


def _search_entry(request: Request) -> Entry:
    entry = entry_of(request)
    if entry.kind != "search":
        raise records.NotFound(f"{entry.name!r} is a {entry.kind}, not a search")
    return entry


async def search(request: Request) -> Response:
    entry = _search_entry(request)
    summary = await anyio.to_thread.run_sync(searches.summary, entry)
    return render(request, "search.html", entry=entry, summary=summary,
                  **_run_info(request, entry))


async def data(request: Request) -> Response:
    entry = _search_entry(request)
    return JSONResponse(await anyio.to_thread.run_sync(searches.data, entry))


async def events(request: Request) -> Response:
    entry = _search_entry(request)
    runs = request.app.state.runs

    def fingerprint() -> object:
        return searches.fingerprint(entry), runs.driving(entry.path)

    def payload() -> dict:
        out = searches.data(entry)
        out["alive"] = out["alive"] or runs.driving(entry.path)
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
