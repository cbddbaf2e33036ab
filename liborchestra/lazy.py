"""A module imported on first use, for the heavy imports a command may never need."""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for module `name`; the first attribute read imports it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attribute)
