"""The pages over journals: the overview, a batch's table, one execution and its files, the
launch form, and the retry and cancel actions. Reads run in worker threads (SQLite blocks);
actions go through the same library calls as `runaway retry` and `runaway cancel`."""

from __future__ import annotations

import argparse
import math
import mimetypes
import time
from pathlib import Path
from urllib.parse import urlencode

import anyio
import attrs
import jinja2
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from liborchestra.errors import OrchestraError
from orchestra import files, records, searches
from orchestra.discovery import Entry
from orchestra.live import event_stream
from orchestra.security import CSRF_FIELD, FILE_CSP, check_csrf

ALGOS = ("random", "grid", "qmc", "tpe", "cmaes", "gp")


# -- filters -----------------------------------------------------------------------------------

def when(epoch: float | None) -> str:
    return "" if not epoch else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f} s" if value < 120 else f"{value / 60:.1f} min"


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- helpers -----------------------------------------------------------------------------------

def render(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    env: jinja2.Environment = request.app.state.templates
    html = env.get_template(name).render(csrf=request.app.state.csrf, csrf_field=CSRF_FIELD,
                                         **context)
    return HTMLResponse(html, status_code=status)


def entry_of(request: Request) -> Entry:
    entry = request.app.state.catalog.get(request.path_params["id"])
    if entry is None:
        raise records.NotFound(f"no campaign, batch or search {request.path_params['id']!r}")
    return entry


def _run_info(request: Request, entry: Entry) -> dict:
    run = request.app.state.runs.get(entry.path)
    return {"driven_here": run is not None and not run.done,
            "run_error": run.error if run is not None else None}


async def posted(request: Request) -> dict[str, str]:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not check_csrf(request, fields.get(CSRF_FIELD), request.app.state.csrf):
        raise records.Forbidden("this form is stale or came from elsewhere: reload the page")
    return fields


# -- overview ----------------------------------------------------------------------------------

def _summaries(request: Request) -> list[dict]:
    request.app.state.campaigns.forget_missing()
    out = []
    for entry in request.app.state.catalog.entries():
        try:
            if entry.kind == "search":  # the trials of the search, from its store
                s = searches.summary(entry)
            elif entry.kind == "campaign":  # its records and this clone's runs in flight
                index = request.app.state.campaigns.get(entry.folder)
                s = attrs.asdict(index.summary(), recurse=False)
            else:
                with records.opened(entry.journal) as journal:
                    s = attrs.asdict(records.summary(journal, entry.kind), recurse=False)
        except records.NotFound:
            continue
        out.append({"id": entry.id, "kind": entry.kind, "name": s["name"],
                    "folder": str(entry.folder), "counts": s["counts"], "total": s["total"],
                    "alive": s["alive"] or request.app.state.runs.driving(entry.path),
                    "journal": entry.journal is not None})
    return out


async def overview(request: Request) -> Response:
    items = await anyio.to_thread.run_sync(_summaries, request)
    return render(request, "overview.html", items=items, states=records.STATES)


async def overview_events(request: Request) -> Response:
    def payload() -> list[dict]:
        return [{k: v for k, v in s.items() if k in ("id", "counts", "total", "alive")}
                for s in _summaries(request)]
    return event_stream(payload, payload)


# -- a batch -----------------------------------------------------------------------------------

def table_context(entry: Entry, summary: records.Summary, query: records.Query,
                  found: tuple[list[records.Execution], int], sorts: list[str], url: str,
                  key: str = "seq") -> dict:
    """What batch.html and batch_table.html show of one page of a table of executions (a
    batch's or a campaign's): `url` is the table's, a row's page is `url/<row.key>`."""
    rows, matching = found
    pages = max(1, math.ceil(matching / records.PAGE_SIZE))
    if query.page > pages:
        raise records.NotFound(f"no page {query.page} (there are {pages})")
    base = {"state": query.state, "q": query.text, "commit": query.commit, "sort": query.sort,
            "desc": "1" if query.desc else ""}

    def link(**change) -> str:
        merged = {**base, "page": query.page, **change}
        return "?" + urlencode({k: v for k, v in merged.items() if v not in ("", None)})

    return {"entry": entry, "summary": summary, "rows": rows, "query": query,
            "matching": matching, "pages": pages, "link": link, "states": records.STATES,
            "sorts": sorts, "url": url, "key": key, "driven_here": False, "run_error": None}


def _batch_context(request: Request, entry: Entry) -> dict:
    query = records.Query.parse(dict(request.query_params))
    with records.opened(entry.journal) as journal:
        summary = records.summary(journal, entry.kind)
        found = records.page(journal.db, query)
    return {**table_context(entry, summary, query, found, list(records.SORTS),
                            f"/batch/{entry.id}"), **_run_info(request, entry)}


async def batch(request: Request) -> Response:
    entry = entry_of(request)
    context = await anyio.to_thread.run_sync(_batch_context, request, entry)
    template = "batch_table.html" if request.query_params.get("fragment") else "batch.html"
    return render(request, template, **context)


async def batch_events(request: Request) -> Response:
    entry = entry_of(request)

    def fingerprint() -> object:
        with records.opened(entry.journal) as journal:
            return records.last_change(journal), request.app.state.runs.driving(entry.path)

    def payload() -> dict:
        with records.opened(entry.journal) as journal:
            s = records.summary(journal, entry.kind)
        return {"counts": s.counts, "total": s.total,
                "alive": s.alive or request.app.state.runs.driving(entry.path)}

    return event_stream(fingerprint, payload)


async def retry(request: Request) -> Response:
    entry = entry_of(request)
    fields = await posted(request)
    if entry.kind != "batch":
        raise records.BadRequest(f"a {entry.kind} cannot be retried from here")
    states = [s for s in ("failed", "lost", "cancelled") if fields.get(s)] or ["failed"]
    try:
        await request.app.state.runs.retry(entry.path, states)
    except OrchestraError as error:
        raise records.Conflict(str(error)) from None
    return RedirectResponse(f"/batch/{entry.id}", status_code=303)


async def cancel(request: Request) -> Response:
    """`runaway cancel`: the driver is asked to stop (ours directly; another process's by the
    signal runaway sends); with no driver, what was left in flight is killed."""
    entry = entry_of(request)
    await posted(request)
    runs = request.app.state.runs
    if not runs.cancel(entry.path):
        if entry.kind != "batch":
            raise records.BadRequest(f"a {entry.kind} not driven by this server is cancelled "
                                     "from its own command line")
        from runaway import batch_cmd

        notes = _Notes()
        try:
            await batch_cmd.cancel(argparse.Namespace(name=entry.folder.name,
                                                      output=entry.folder), notes, None)
        except OrchestraError as error:
            raise records.Conflict(str(error)) from None
    return RedirectResponse(f"/batch/{entry.id}", status_code=303)


class _Notes:
    """Where runaway's cancel writes its notes: kept for the log, not printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)


# -- an execution ------------------------------------------------------------------------------

def _folder(entry: Entry, uuid: str) -> Path:
    folder = entry.folder / uuid
    if "/" in uuid or uuid in ("", ".", ".."):
        raise records.NotFound("no such execution folder")
    return folder


def execution_context(entry: Entry, summary: records.Summary, row: records.Execution,
                      folder: Path, base: str, parent: str, title: str, **more) -> dict:
    """What execution.html shows of one execution, whoever recorded it: the row, the tails of
    its streams, its images and its other files (`base`: the URL of its page)."""
    listed, cut = files.listing(folder)
    tails = [(name, files.tail(folder / name)) for name in files.STREAMS
             if any(f.path == name for f in listed)]
    ecode = (folder / "ecode").read_text().strip() if any(f.path == "ecode" for f in listed) \
        else None
    return {"entry": entry, "summary": summary, "row": row, "tails": tails,
            "images": [f for f in listed if f.image],
            "others": [f for f in listed if not f.image and f.path not in files.STREAMS],
            "cut": cut, "ecode_file": ecode, "base": base, "parent": parent, "title": title,
            "patch": None, "facts": [], **more}


def _execution_context(request: Request, entry: Entry, seq: int) -> dict:
    with records.opened(entry.journal) as journal:
        row = records.execution(journal, seq)
        summary = records.summary(journal, entry.kind)
    return execution_context(entry, summary, row, _folder(entry, row.uuid),
                             f"/batch/{entry.id}/{seq}", f"/batch/{entry.id}",
                             f"execution #{seq}")


async def execution(request: Request) -> Response:
    entry = entry_of(request)
    context = await anyio.to_thread.run_sync(_execution_context, request, entry,
                                             request.path_params["seq"])
    return render(request, "execution.html", **context)


def file_response(request: Request, path: Path) -> Response:
    """One file of an execution's folder (already confined): images as images (an SVG too,
    under a CSP that runs nothing), everything else as plain text or, asked, a download."""
    kind = files.IMAGES.get(path.suffix.lower())
    download = bool(request.query_params.get("download"))
    if download:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {"content-security-policy": FILE_CSP, "cache-control": "no-store"}
    return FileResponse(path, media_type=kind or "text/plain; charset=utf-8", headers=headers,
                        filename=path.name if download else None,
                        content_disposition_type="attachment" if download else "inline")


async def file(request: Request) -> Response:
    entry = entry_of(request)

    def find() -> Path:
        with records.opened(entry.journal) as journal:
            row = records.execution(journal, request.path_params["seq"])
        return files.confined(_folder(entry, row.uuid), request.path_params["path"])

    return file_response(request, await anyio.to_thread.run_sync(find))


# -- launch ------------------------------------------------------------------------------------

def _launch_page(request: Request, fields: dict[str, str], error: str | None,
                 status: int = 200) -> Response:
    campaigns = [e for e in request.app.state.catalog.entries() if e.kind == "campaign"]
    return render(request, "launch.html", status=status, fields=fields, error=error,
                  algos=ALGOS, home=str(request.app.state.runs.home), campaigns=campaigns)


async def launch_form(request: Request) -> Response:
    fields = {k: v for k, v in request.query_params.items() if k in ("kind", "campaign")}
    return await anyio.to_thread.run_sync(_launch_page, request, fields, None)


async def launch(request: Request) -> Response:
    fields = await posted(request)
    runs = request.app.state.runs
    kind = fields.get("kind", "batch")
    try:
        if kind == "campaign":
            entry = request.app.state.catalog.get(fields.get("campaign", ""))
            if entry is None or entry.kind != "campaign":
                raise OrchestraError("campaign: choose one of the campaigns found")
            await runs.start_campaign(fields, entry.folder)
            return RedirectResponse(f"/campaign/{entry.id}", status_code=303)
        path = await (runs.start_search(fields) if kind == "search"
                      else runs.start_batch(fields))
    except OrchestraError as error:
        return _launch_page(request, fields, str(error), status=400)
    entry = request.app.state.catalog.add(path)
    target = "search" if entry.kind == "search" else "batch"
    return RedirectResponse(f"/{target}/{entry.id}", status_code=303)
