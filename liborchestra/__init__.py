"""liborchestra: run scripts on slots of local machines, SSH hosts and clusters.

The library never prints and never reads argv: it emits events (see `events`) and raises
`OrchestraError` subclasses whose message is one clear line for the user.
"""

from liborchestra.engine import Engine, SyncEngine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution, Result, State
from liborchestra.profile import Profile, load_profile

__all__ = [
    "Engine",
    "Execution",
    "OrchestraError",
    "Profile",
    "Result",
    "State",
    "SyncEngine",
    "load_profile",
]
