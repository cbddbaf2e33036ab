"""Import of the original runaway's profiles (the 9-field YAML format) as `custom` profiles.

The file runs unchanged: `ssh_configuration` is the frontend (a Host of ~/.ssh/config, which
also gives user, key and known_hosts), `allocation_duration` (minutes) the walltime of each
allocation, and `execution` the commands that run the script in its slot. All nine fields are
required, as they were; anything else in the file is an error.
"""

from __future__ import annotations

from typing import Any

from liborchestra._fields import Bad, Fields, kind_of, str_, str_list
from liborchestra.profile import CustomCommands, Profile, SchedulerSpec, SSHOptions

FIELDS = ("name", "ssh_configuration", "node_proxycommand", "start_allocation",
          "cancel_allocation", "allocation_duration", "get_node_handles", "directory",
          "execution")
_ONLY_LEGACY = set(FIELDS) - {"name", "directory"}


def is_legacy(data: Any) -> bool:
    """A mapping with no `scheduler` and some field only the legacy format has."""
    return isinstance(data, dict) and "scheduler" not in data and bool(set(data) & _ONLY_LEGACY)


def _minutes(value: Any, _: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise Bad(f"expected a positive number of minutes, got {value!r}")
    return float(value) * 60


def _text(value: Any, where: str) -> str:
    """A string field that may be empty (node_proxycommand: empty means through the frontend)."""
    if value == "":
        return ""
    return str_(value, where)


def _commands(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Bad(f"expected a list of shell commands, got {kind_of(value)}")
    for index, item in enumerate(value):
        if isinstance(item, dict):  # `- sed -e "s/salloc: Granted//"` is a mapping to YAML
            raise Bad(f"item {index + 1} is not a string: YAML read `key: value` in it; quote "
                      "a command that contains ': ' (e.g. '...' with '' for each ')")
    return str_list(value, where)


def _some_commands(what: str):
    def convert(value: Any, where: str) -> tuple[str, ...]:
        commands = _commands(value, where)
        if not commands:
            raise Bad(f"expected at least one command ({what})")
        return commands

    return convert


def parse_legacy(data: dict, source: str) -> Profile:
    """A legacy profile as a `custom` Profile; ProfileError naming the file and the field."""
    f = Fields(data, source)
    name = f.get("name", str_, required=True)
    host = f.get("ssh_configuration", str_, required=True)
    # Present but empty (or null): nodes are reached through the frontend as a jump host.
    proxy = f.get("node_proxycommand", _text, required="node_proxycommand" not in data)
    start = f.get("start_allocation", _some_commands("one must export RUNAWAY_NODES"),
                  required=True)
    cancel = f.get("cancel_allocation", _commands, required=True)
    walltime = f.get("allocation_duration", _minutes, required=True)
    handles = f.get("get_node_handles", _some_commands("one must export RUNAWAY_HANDLES"),
                    required=True)
    directory = f.get("directory", str_, required=True)
    execution = f.get("execution", _some_commands(
        "e.g. `bash $RUNAWAY_SCRIPT_PATH $RUNAWAY_ARGUMENTS`"), required=True)
    f.done()
    for field, value in (("ssh_configuration", host), ("directory", directory)):
        if not value.strip():
            raise f.error(field, "must not be empty")
    commands = CustomCommands(start_allocation=start, cancel_allocation=cancel,
                              get_node_handles=handles, node_proxycommand=proxy or None,
                              execution=execution)
    return Profile(name=name, scheduler=SchedulerSpec(kind="custom", walltime=walltime,
                                                      custom=commands),
                   ssh=SSHOptions(host=host), directory=directory, source=source)
