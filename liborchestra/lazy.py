"""A module imported on first use, for the heavy imports a command may never need."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable


class LazyModule:
    """Stands for module `name`; the first attribute read imports it."""

    def __init__(self, name: str,
                 importer: Callable[[str], ModuleType] = importlib.import_module) -> None:
        self._name, self._importer = name, importer

    def __getattr__(self, attribute: str) -> object:
        module = self._importer(self._name)
        return getattr(module, attribute)
