"""The ASGI application: routes, templates, the lifespan that owns the runs the server drives,
and answers to bad requests that are a clear 4xx page, never a traceback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from liborchestra import __version__
from orchestra import campaign_page, pages, search_page
from orchestra.campaigns import Indexes
from orchestra.discovery import Catalog
from orchestra.launch import Runs
from orchestra.records import BadRequest, Conflict, Forbidden, NotFound
from orchestra.security import Guard, new_token

HERE = Path(__file__).parent
log = logging.getLogger(__name__)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = pages.when
    env.filters["seconds"] = pages.seconds
    env.filters["size"] = pages.size
    env.globals["version"] = __version__
    return env


def _error_page(request: Request, status: int, message: str) -> Response:
    env: jinja2.Environment = request.app.state.templates
    page = env.get_template("error.html").render(status=status, message=message,
                                                 csrf=request.app.state.csrf)
    return HTMLResponse(page, status_code=status)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return _error_page(request, error.status_code, str(error.detail))


async def _not_found(request: Request, error: Exception) -> Response:
    return _error_page(request, 404, str(error) or "not found")


async def _bad_request(request: Request, error: Exception) -> Response:
    return _error_page(request, 400, str(error))


async def _forbidden(request: Request, error: Exception) -> Response:
    return _error_page(request, 403, str(error))


async def _conflict(request: Request, error: Exception) -> Response:
    return _error_page(request, 409, str(error))


async def _server_error(request: Request, error: Exception) -> Response:
    log.exception("error answering %s", request.url.path, exc_info=error)
    return _error_page(request, 500, "the server met an error (see its log)")


def create_app(roots: list[Path], token: str | None = None, rescan: float = 2.0) -> Guard:
    """The app over the records under `roots`; every request needs `token` when it is set.
    Runs started from the page are created under the first root."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            app.state.runs = Runs(tg, app.state.catalog.roots[0])
            try:
                yield
            finally:
                app.state.runs.stop_all()  # running executions killed, queued again

    routes = [
        Route("/", pages.overview),
        Route("/events", pages.overview_events),
        Route("/launch", pages.launch_form, methods=["GET"]),
        Route("/launch", pages.launch, methods=["POST"]),
        Route("/batch/{id}", pages.batch),
        Route("/batch/{id}/events", pages.batch_events),
        Route("/batch/{id}/retry", pages.retry, methods=["POST"]),
        Route("/batch/{id}/cancel", pages.cancel, methods=["POST"]),
        Route("/batch/{id}/{seq:int}", pages.execution),
        Route("/batch/{id}/{seq:int}/files/{path:path}", pages.file),
        Route("/campaign/{id}", campaign_page.campaign),
        Route("/campaign/{id}/events", campaign_page.events),
        Route("/campaign/{id}/retry", campaign_page.retry, methods=["POST"]),
        Route("/campaign/{id}/cancel", campaign_page.cancel, methods=["POST"]),
        Route("/campaign/{id}/{run}", campaign_page.execution),
        Route("/campaign/{id}/{run}/patch", campaign_page.patch),
        Route("/campaign/{id}/{run}/files/{path:path}", campaign_page.file),
        Route("/search/{id}", search_page.search),
        Route("/search/{id}/data", search_page.data),
        Route("/search/{id}/events", search_page.events),
        Route("/static/plotly.js", search_page.plotly_js),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        HTTPException: _http_error, NotFound: _not_found, BadRequest: _bad_request,
        Forbidden: _forbidden, Conflict: _conflict,
        Exception: _server_error})
    app.state.catalog = Catalog(roots, rescan)
    app.state.campaigns = Indexes()
    app.state.templates = _templates()
    app.state.csrf = new_token()
    return Guard(app, token)
