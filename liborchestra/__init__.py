"""liborchestra: run scripts on slots of local machines, SSH hosts and clusters.

The library never prints and never reads argv: it emits events (see `events`) and raises
`OrchestraError` subclasses whose message is one clear line for the user.
"""

from importlib.metadata import PackageNotFoundError, version

from liborchestra.engine import Engine, SyncEngine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution, Result, State
from liborchestra.profile import Profile, load_profile

try:
    __version__ = version("orchestra-tools")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

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
