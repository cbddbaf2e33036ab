"""asyncssh's import, without its slowest step: looking for liboqs by way of gcc.

When imported, asyncssh asks `ctypes.util.find_library` for liboqs (its post-quantum key
exchange), under two names. On Linux each lookup runs ldconfig, then gcc (where it is
installed) and then ld; gcc's link test is half of it: 10 ms of every command's start on the
test machine, 94 against 104 ms for the whole import. The library is loaded by the dynamic
loader, which looks where ldconfig's cache and LD_LIBRARY_PATH say, and those are what the
ldconfig and ld lookups read; gcc's link path adds only its own folders. So for the import
only, the lookup leaves gcc out, and ld too unless LD_LIBRARY_PATH is set (see
`_library_path`); everything else is Python's own lookup, unchanged."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from types import ModuleType
from typing import Callable, Iterator


def import_module(name: str) -> ModuleType:
    """Module `name`: asyncssh, or one that imports it."""
    if "asyncssh" in sys.modules:
        return importlib.import_module(name)
    with _lookup_without_gcc():
        return importlib.import_module(name)


@contextlib.contextmanager
def _lookup_without_gcc() -> Iterator[None]:
    import ctypes.util  # here: asyncssh imports it anyway; local work need not

    lookup = _without_gcc(ctypes.util)
    if lookup is None:  # not Linux, or another Python's ctypes: its own lookup
        yield
        return
    original, ctypes.util.find_library = ctypes.util.find_library, lookup
    try:
        yield
    finally:
        ctypes.util.find_library = original


def _without_gcc(util: ModuleType) -> Callable[[str], str | None] | None:
    """Python's Linux lookup (ldconfig, then gcc, then ld) without gcc; None where ctypes
    has not these steps."""
    ldconfig = getattr(util, "_findSoname_ldconfig", None)
    ld = getattr(util, "_findLib_ld", None)
    soname = getattr(util, "_get_soname", None)
    if not sys.platform.startswith("linux") or None in (ldconfig, ld, soname):
        return None
    return lambda name: ldconfig(name) or (soname(ld(name)) if _library_path() else None)


def _library_path() -> str:
    """LD_LIBRARY_PATH: without it, what ld finds and ldconfig does not is a library the
    loader could not load by its name either (ld also looks in folders, such as /usr/local/lib
    on Debian, that only ldconfig's cache makes loadable), or one that an out-of-date cache
    misses; asyncssh then goes without liboqs's extra key exchange. A run of ld less, twice:
    7 ms of every command's start on the test machine."""
    return os.environ.get("LD_LIBRARY_PATH", "")
