"""Profiles: how to reach a cluster and how to get slots on it.

A profile is a small YAML file. It is validated entirely at load time, so a typo fails before any
connection is opened, with the file, the field and what was expected.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import attrs
import yaml

from liborchestra.errors import ProfileError

KINDS = ("local", "hosts")
LEAVE = ("nothing", "code", "everything")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@attrs.frozen
class SSHOptions:
    """Connection options; anything left unset comes from ~/.ssh/config, then OpenSSH defaults."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    identity: tuple[str, ...] = ()
    known_hosts: str | None = None
    config: tuple[str, ...] = ()
    max_channels: int = 8
    max_connections: int = 4
    keepalive: float = 15.0
    connect_timeout: float = 15.0


@attrs.frozen
class HostSpec:
    """One machine of a `hosts` profile."""

    host: str
    port: int | None = None
    slots: int | None = None  # None: one per core, asked of the host


@attrs.frozen
class SchedulerSpec:
    kind: str
    hosts: tuple[HostSpec, ...] = ()


@attrs.frozen
class Profile:
    """Everything needed to turn an Execution into a process on some slot."""

    name: str
    scheduler: SchedulerSpec
    ssh: SSHOptions | None = None
    slots: int | str = "cores"
    directory: str = "~/.orchestra"
    shared_filesystem: bool = True
    setup: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    source: str = "<memory>"

    @property
    def is_local(self) -> bool:
        return self.scheduler.kind == "local"


class _Fields:
    """Reads one YAML mapping: typed fields, defaults, and unknown keys reported by name."""

    def __init__(self, data: Any, source: str, where: str = "") -> None:
        if not isinstance(data, dict):
            raise ProfileError(source, where or None, f"expected a mapping, got {_kind(data)}")
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
        except _Bad as bad:
            raise self.error(key, str(bad)) from None

    def done(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"unknown field; expected one of {known}")


class _Bad(Exception):
    pass


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _str(value: Any, _: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"expected a string, got {_kind(value)}")
    return str(value)


def _bool(value: Any, _: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {value!r}")
    return value


def _positive_int(value: Any, _: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Bad(f"expected a positive integer, got {value!r}")
    return value


def _port(value: Any, where: str) -> int:
    port = _positive_int(value, where)
    if port > 65535:
        raise _Bad(f"expected a port number (1-65535), got {value!r}")
    return port


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise _Bad(f"expected a list of strings, got {_kind(value)}")
    return tuple(_str(item, where) for item in value)


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
    raise _Bad(f"expected a duration such as 90, 30s, 15m, 2h or 1:30:00, got {value!r}")


def _slots(value: Any, _: str) -> int | str:
    if value in ("cores", "gpus"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise _Bad(f"expected a positive integer, 'cores' or 'gpus', got {value!r}")


def _ssh(value: Any, where: str, source: str) -> SSHOptions:
    if isinstance(value, str):
        value = {"host": value}
    f = _Fields(value, source, where)
    options = SSHOptions(
        host=f.get("host", _str),
        port=f.get("port", _port),
        user=f.get("user", _str),
        identity=f.get("identity", _str_list, ()),
        known_hosts=f.get("known_hosts", _str),
        config=f.get("config", _str_list, ()),
        max_channels=f.get("max_channels", _positive_int, 8),
        max_connections=f.get("max_connections", _positive_int, 4),
        keepalive=f.get("keepalive", parse_duration, 15.0),
        connect_timeout=f.get("connect_timeout", parse_duration, 15.0),
    )
    f.done()
    return options


def _host(value: Any, where: str, source: str) -> HostSpec:
    if isinstance(value, str):
        return HostSpec(host=value)
    f = _Fields(value, source, where)
    spec = HostSpec(host=f.get("host", _str, required=True), port=f.get("port", _port),
                    slots=f.get("slots", _positive_int))
    f.done()
    return spec


def _scheduler(value: Any, where: str, source: str) -> SchedulerSpec:
    if isinstance(value, str):
        value = {"kind": value}
    f = _Fields(value, source, where)
    kind = f.get("kind", _str, required=True)
    if kind not in KINDS:
        raise f.error("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    hosts: tuple[HostSpec, ...] = ()
    if kind == "hosts":
        raw = f.get("hosts", lambda v, w: v, required=True)
        if not isinstance(raw, list) or not raw:
            raise f.error("hosts", "expected a non-empty list of hosts")
        hosts = tuple(_host(item, f"{f.path('hosts')}[{i}]", source) for i, item in enumerate(raw))
    f.done()
    return SchedulerSpec(kind=kind, hosts=hosts)


def _env(value: Any, _: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Bad(f"expected a mapping of NAME: value, got {_kind(value)}")
    pairs = []
    for key, item in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            raise _Bad(f"{key!r} is not a valid environment variable name")
        pairs.append((str(key), _str(item, "")))
    return tuple(pairs)


def parse_profile(data: Any, source: str, default_name: str = "profile") -> Profile:
    """Validate a profile given as parsed YAML; raises ProfileError naming the bad field."""
    f = _Fields(data, source)
    scheduler = f.get("scheduler", lambda v, w: _scheduler(v, w, source), required=True)
    ssh = f.get("ssh", lambda v, w: _ssh(v, w, source))
    profile = Profile(
        name=f.get("name", _str, default_name),
        scheduler=scheduler,
        ssh=ssh,
        slots=f.get("slots", _slots, "cores"),
        directory=f.get("directory", _str, "~/.orchestra"),
        shared_filesystem=f.get("shared_filesystem", _bool, True),
        setup=f.get("setup", _str_list, ()),
        env=f.get("env", _env, ()),
        source=source,
    )
    f.done()
    if scheduler.kind == "local" and ssh is not None:
        raise ProfileError(source, "ssh", "a local profile runs on this machine; remove ssh")
    return profile


def search_path() -> list[Path]:
    """Where profiles are found by name, first match wins."""
    config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return [Path.cwd() / "profiles", config / "orchestra" / "profiles"]


def load_profile(name_or_path: str) -> Profile:
    """Load a profile by path, by name from `search_path()`, or the built-in `local`."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yml", ".yaml") or os.sep in name_or_path:
        if not candidate.is_file():
            raise ProfileError(name_or_path, None, "no such profile file")
        return _load_file(candidate)
    for folder in search_path():
        for suffix in (".yml", ".yaml"):
            path = folder / f"{name_or_path}{suffix}"
            if path.is_file():
                return _load_file(path)
    builtin = resources.files("liborchestra") / "builtin_profiles" / f"{name_or_path}.yml"
    if builtin.is_file():
        return _load_text(builtin.read_text(), f"<built-in {name_or_path}>", name_or_path)
    places = ", ".join(str(p) for p in search_path())
    raise ProfileError(name_or_path, None, f"no profile of that name in {places} or built in")


def _load_file(path: Path) -> Profile:
    try:
        text = path.read_text()
    except OSError as error:
        raise ProfileError(str(path), None, f"cannot read: {error.strerror}") from None
    return _load_text(text, str(path), path.stem)


def _load_text(text: str, source: str, name: str) -> Profile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(error, "problem", None) or str(error)
        raise ProfileError(source, where, f"invalid YAML: {problem}") from None
    if data is None:
        raise ProfileError(source, None, "the file is empty")
    return parse_profile(data, source, name)
