"""The pages over an expegit campaign: its table of executions (the batch page's template, fed
from the campaign's index), its live counts, one execution (the batch's execution template)
with its files and the patch a dirty run ran with."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from liborchestra.errors import OrchestraError
from orchestra import files, records
from orchestra.campaigns import SORTS, Index
from orchestra.discovery import Entry
from orchestra.live import event_stream
from orchestra.pages import (
    entry_of,
    execution_context,
    file_response,
    posted,
    render,
    table_context,
)


def _campaign(request: Request) -> tuple[Entry, Index]:
    entry = entry_of(request)
    if entry.kind != "campaign":
        raise records.NotFound(f"no campaign {request.path_params['id']!r}")
    return entry, request.app.state.campaigns.get(entry.folder)


def _table(request: Request, entry: Entry, index: Index) -> dict:
    query = records.Query.parse(dict(request.query_params), sorts=SORTS, default="started")
    here = request.app.state.runs.under(entry.folder)
    return {**table_context(entry, index.summary(), query, index.page(query), list(SORTS),
                            f"/campaign/{entry.id}", key="uuid"),
            "driven_here": bool(here),
            "run_error": next((r.error for r in request.app.state.runs.runs.values()
                               if r.error and r.path.is_relative_to(entry.folder)), None)}


async def campaign(request: Request) -> Response:
    entry, index = _campaign(request)
    context = await anyio.to_thread.run_sync(_table, request, entry, index)
    template = "batch_table.html" if request.query_params.get("fragment") else "batch.html"
    return render(request, template, **context)


async def events(request: Request) -> Response:
    entry, index = _campaign(request)

    def fingerprint() -> object:
        if not entry.path.is_file():
            raise records.NotFound("the campaign went away")
        return index.fingerprint()

    def payload() -> dict:
        s = index.summary()
        return {"counts": s.counts, "total": s.total, "alive": s.alive}

    return event_stream(fingerprint, payload)


def _execution(request: Request, entry: Entry, index: Index) -> dict:
    run_id = request.path_params["run"]
    row, folder = index.execution(run_id)
    patch = index.patch(row.payload.get("patch"))
    payload = row.payload
    facts = [(name, payload[key]) for name, key in (
        ("run", "run"), ("recorded by", "by"), ("profile", "profile"), ("script", "script"),
        ("rerun of", "rerun_of")) if payload.get(key)]
    if payload.get("large"):  # git-annex links point outside the folder: not served here
        facts.append(("large files (git-annex; `expegit get` them)",
                      ", ".join(payload["large"])))
    if row.state in ("submitted", "running", "queued"):
        facts.append(("recorded", "not yet: the run has it in flight"))
    return execution_context(entry, index.summary(), row, folder,
                             f"/campaign/{entry.id}/{run_id}", f"/campaign/{entry.id}",
                             f"execution {run_id[:8]}", facts=facts,
                             patch=files.tail(patch) if patch else None)


async def execution(request: Request) -> Response:
    entry, index = _campaign(request)
    context = await anyio.to_thread.run_sync(_execution, request, entry, index)
    return render(request, "execution.html", **context)


async def file(request: Request) -> Response:
    entry, index = _campaign(request)

    def find():
        folder = index.folder(request.path_params["run"])
        return files.confined(folder, request.path_params["path"])

    return file_response(request, await anyio.to_thread.run_sync(find))


async def patch(request: Request) -> Response:
    """The whole patch of a dirty execution, as text (the one its record names)."""
    entry, index = _campaign(request)

    def find():
        row, _ = index.execution(request.path_params["run"])
        path = index.patch(row.payload.get("patch"))
        if path is None:
            raise records.NotFound("this execution ran a clean commit: no patch")
        return path

    return file_response(request, await anyio.to_thread.run_sync(find))


async def retry(request: Request) -> Response:
    """`expegit rerun --failed`, driven by this server."""
    entry, index = _campaign(request)
    await posted(request)
    runs = request.app.state.runs
    if runs.under(entry.folder):
        raise records.Conflict("a run of this campaign is going on here: wait, or cancel it")
    try:
        await runs.rerun_failed(entry.folder)
    except OrchestraError as error:
        raise records.Conflict(str(error)) from None
    index.refresh(force=True)
    return RedirectResponse(f"/campaign/{entry.id}", status_code=303)


async def cancel(request: Request) -> Response:
    """The campaign's runs this server drives are cancelled (running executions killed and
    queued again, as a second Ctrl-C does to `expegit run`)."""
    entry, _ = _campaign(request)
    await posted(request)
    runs = request.app.state.runs
    here = runs.under(entry.folder)
    if not here:
        raise records.Conflict("no run of this campaign is driven by this server (stop an "
                               "`expegit run` started elsewhere with its Ctrl-C)")
    for run in here:
        runs.cancel(run.path)
    return RedirectResponse(f"/campaign/{entry.id}", status_code=303)
