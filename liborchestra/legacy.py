"""Import of the original runaway's profiles (the 9-field YAML format) as `custom` profiles."""

from __future__ import annotations

from typing import Any

from liborchestra.profile import Profile

FIELDS = ("name", "ssh_configuration", "node_proxycommand", "start_allocation",
          "cancel_allocation", "allocation_duration", "get_node_handles", "directory",
          "execution")


def is_legacy(data: Any) -> bool:
    """A mapping with the legacy fields (most of them) and no `scheduler`."""
    return (isinstance(data, dict) and "scheduler" not in data
            and len(set(data) & set(FIELDS)) >= 5)


def parse_legacy(data: dict, source: str) -> Profile:
    raise NotImplementedError("legacy profiles arrive with the custom scheduler")
