"""Reading YAML mappings field by field, with errors that name the file, the field and what
was expected. Private to the profile loaders."""

from __future__ import annotations

import re
from typing import Any, Callable

from liborchestra.errors import ProfileError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Fields:
    """Reads one YAML mapping: typed fields, defaults, and unknown keys reported by name."""

    def __init__(self, data: Any, source: str, where: str = "") -> None:
        if not isinstance(data, dict):
            raise ProfileError(source, where or None, f"expected a mapping, got {kind_of(data)}")
        self.data, self.source, self.where, self.seen = data, source, where, set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> ProfileError:
        return ProfileError(self.source, self.path(key), message)

    def get(self, key: str, conv: Callable[[Any, str], Any], default: Any = None,
            required: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.error(key, "is required")
            return default
        try:
            return conv(self.data[key], self.path(key))
        except Bad as bad:
            raise self.error(key, str(bad)) from None

    def done(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"unknown field; expected one of {known}")


class Bad(Exception):
    pass


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def str_(value: Any, _: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Bad(f"expected a string, got {kind_of(value)}")
    return str(value)


def bool_(value: Any, _: str) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, got {value!r}")
    return value


def positive_int(value: Any, _: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Bad(f"expected a positive integer, got {value!r}")
    return value


def port_number(value: Any, where: str) -> int:
    port = positive_int(value, where)
    if port > 65535:
        raise Bad(f"expected a port number (1-65535), got {value!r}")
    return port


def str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise Bad(f"expected a list of strings, got {kind_of(value)}")
    return tuple(str_(item, where) for item in value)


def parse_duration(value: Any, _: str = "") -> float:
    """Seconds from `90`, `30s`, `15m`, `2h`, `1d` or `[[D-]HH:]MM:SS`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    text = str(value)
    match = _DURATION.match(text)
    if match:
        return float(match.group(1)) * _UNITS[match.group(2)]
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if 2 <= len(parts) <= 3 and all(p.isdigit() for p in parts) and (not days or days.isdigit()):
        seconds = 0
        for part in parts:
            seconds = seconds * 60 + int(part)
        return float(seconds + int(days or 0) * 86400)
    raise Bad(f"expected a duration such as 90, 30s, 15m, 2h or 1:30:00, got {value!r}")


