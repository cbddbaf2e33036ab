"""Folders for a benchmark's runs. Alone, a benchmark removes its folder as it ends. Under
`bench.run`, every benchmark's folder is kept in one folder removed at the very end: on the
test machine's ext4 (no journal), each file made in the minute after many are removed costs
up to 0.9 ms instead of 0.02, so removing one benchmark's folder would slow the next one's
own tool, not its peers that make no files."""

from __future__ import annotations

import contextlib
import tempfile
from typing import ContextManager


def folder(keep_in: str | None = None, where: str | None = None) -> ContextManager[str]:
    """A new folder: in `keep_in` and left there, or else temporary (in `where`)."""
    if keep_in is not None:
        return contextlib.nullcontext(tempfile.mkdtemp(prefix="bench-", dir=keep_in))
    return tempfile.TemporaryDirectory(dir=where)
