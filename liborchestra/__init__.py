"""liborchestra: run scripts on slots of local machines, SSH hosts and clusters.

The library never prints and never reads argv: it emits events (see `events`) and raises
`OrchestraError` subclasses whose message is one clear line for the user.

The public names are imported on first use (PEP 562): a tool that only needs an error class
or the version (`expegit status`) does not pay for the engine, asyncssh and the schedulers.
"""

from importlib import import_module

from liborchestra.errors import OrchestraError

_LAZY = {
    "Engine": "liborchestra.engine",
    "SyncEngine": "liborchestra.engine",
    "Execution": "liborchestra.execution",
    "Result": "liborchestra.execution",
    "State": "liborchestra.execution",
    "Profile": "liborchestra.profile",
    "load_profile": "liborchestra.profile",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~40 ms: only when asked

    try:
        return version("orchestra-tools")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> object:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'liborchestra' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Engine",
    "Execution",
    "OrchestraError",
    "Profile",
    "Result",
    "State",
    "SyncEngine",
    "load_profile",
]
