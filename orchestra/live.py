"""Server-sent events: a page's data pushed again whenever the record changes, so counts and
plots move without a reload. Each tick reads a cheap fingerprint in a worker thread (SQLite
reads block); the full payload is built and sent only when the fingerprint moved."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import StreamingResponse

INTERVAL = 1.0  # seconds between looks at the record
KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies from closing
STEP = 0.2  # seconds between looks at `stopping` while waiting
# Set when the server is asked to stop: open streams end, so shutdown never waits on them.
stopping = threading.Event()


def event_stream(fingerprint: Callable[[], object], payload: Callable[[], object],
                 interval: float = INTERVAL) -> StreamingResponse:
    """An SSE answer: `payload()` as JSON at once, then after every change of
    `fingerprint()`; a record that disappears ends the stream with an `gone` event."""

    async def events() -> AsyncIterator[str]:
        last, quiet = object(), 0.0
        while True:
            try:
                now = await anyio.to_thread.run_sync(fingerprint)
                if now != last:
                    data = await anyio.to_thread.run_sync(payload)
                    yield f"data: {json.dumps(data, default=str)}\n\n"
                    last, quiet = now, 0.0
            except LookupError:
                yield "event: gone\ndata: {}\n\n"
                return
            if quiet >= KEEPALIVE:
                yield ": keepalive\n\n"
                quiet = 0.0
            waited = 0.0
            while waited < interval:
                if stopping.is_set():
                    return
                await anyio.sleep(STEP)
                waited += STEP
            quiet += interval

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})
