"""Profiles: how to reach a cluster and how to get slots on it.

A profile is a small YAML file. It is validated entirely at load time, so a typo fails before any
connection is opened, with the file, the field and what was expected.
"""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import yaml

from liborchestra._fields import (
    Bad,
    Fields,
    bool_,
    kind_of,
    parse_duration,
    port_number,
    positive_int,
    str_,
    str_list,
)
from liborchestra.errors import ProfileError

KINDS = ("local", "hosts", "slurm", "sge", "pbs", "custom")
CLUSTER_KINDS = ("slurm", "sge", "pbs", "custom")
REACH = ("ssh", "direct", "srun")  # nodes: SSH through the login host, SSH from here, srun steps
LEAVE = ("nothing", "code", "everything")


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
class CustomCommands:
    """Allocation by shell commands, as the original runaway did (see `legacy`)."""

    start_allocation: tuple[str, ...]
    cancel_allocation: tuple[str, ...]
    get_node_handles: tuple[str, ...]
    node_proxycommand: str | None = None
    execution: tuple[str, ...] = ()


@attrs.frozen
class SchedulerSpec:
    kind: str
    hosts: tuple[HostSpec, ...] = ()
    nodes: int = 1  # per allocation
    walltime: float | None = None  # seconds; None: the scheduler's default (custom: unlimited)
    max_allocations: int = 1
    idle_timeout: float = 300.0
    poll_interval: float = 5.0
    options: tuple[str, ...] = ()  # passed through to salloc/sbatch/qsub
    submit: str = "salloc"  # slurm: salloc --no-shell, or sbatch (a holder job)
    pe: str | None = None  # sge: parallel environment
    gpus: int | None = None  # declared GPUs per node, for `slots: gpus`
    custom: CustomCommands | None = None


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
    reach: str = "ssh"
    agent: str | None = "python3"  # the node agent's interpreter; None: a shell wrapper each
    kill_grace: float = 5.0  # seconds from SIGTERM to SIGKILL when a script is stopped
    source: str = "<memory>"

    @property
    def is_local(self) -> bool:
        return self.scheduler.kind == "local"


def _agent(value: Any, _: str) -> str | None:
    """true (the node's python3), false (no agent: a shell wrapper per execution), or the
    interpreter to run it with (a path, for nodes whose python3 is elsewhere or too old)."""
    if value is True:
        return "python3"
    if value is False:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise Bad(f"expected true, false or a python3 path, got {value!r}")


def _slots(value: Any, _: str) -> int | str:
    if value in ("cores", "gpus"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise Bad(f"expected a positive integer, 'cores' or 'gpus', got {value!r}")


def _ssh(value: Any, where: str, source: str) -> SSHOptions:
    if isinstance(value, str):
        value = {"host": value}
    f = Fields(value, source, where)
    options = SSHOptions(
        host=f.get("host", str_),
        port=f.get("port", port_number),
        user=f.get("user", str_),
        identity=f.get("identity", str_list, ()),
        known_hosts=f.get("known_hosts", str_),
        config=f.get("config", str_list, ()),
        max_channels=f.get("max_channels", positive_int, 8),
        max_connections=f.get("max_connections", positive_int, 4),
        keepalive=f.get("keepalive", parse_duration, 15.0),
        connect_timeout=f.get("connect_timeout", parse_duration, 15.0),
    )
    f.done()
    return options


def _host(value: Any, where: str, source: str) -> HostSpec:
    if isinstance(value, str):
        return HostSpec(host=value)
    f = Fields(value, source, where)
    spec = HostSpec(host=f.get("host", str_, required=True), port=f.get("port", port_number),
                    slots=f.get("slots", positive_int))
    f.done()
    return spec


def _scheduler(value: Any, where: str, source: str) -> SchedulerSpec:
    if isinstance(value, str):
        value = {"kind": value}
    f = Fields(value, source, where)
    kind = f.get("kind", str_, required=True)
    if kind not in KINDS:
        raise f.error("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    hosts: tuple[HostSpec, ...] = ()
    if kind == "hosts":
        raw = f.get("hosts", lambda v, w: v, required=True)
        if not isinstance(raw, list) or not raw:
            raise f.error("hosts", "expected a non-empty list of hosts")
        hosts = tuple(_host(item, f"{f.path('hosts')}[{i}]", source) for i, item in enumerate(raw))
    spec = SchedulerSpec(
        kind=kind, hosts=hosts,
        gpus=f.get("gpus", positive_int),
        **(_cluster_fields(f, kind, source) if kind in CLUSTER_KINDS else {}))
    f.done()
    return spec


def _cluster_fields(f: Fields, kind: str, source: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "nodes": f.get("nodes", positive_int, 1),
        "walltime": f.get("walltime", parse_duration),
        "max_allocations": f.get("max_allocations", positive_int, 1),
        "idle_timeout": f.get("idle_timeout", parse_duration, 300.0),
        "poll_interval": f.get("poll_interval", parse_duration, 5.0),
        "options": f.get("options", str_list, ()),
    }
    if kind == "slurm":
        fields["submit"] = f.get("submit", _choice(("salloc", "sbatch")), "salloc")
    if kind == "sge":
        fields["pe"] = f.get("pe", str_)
    if kind == "custom":
        fields["custom"] = CustomCommands(
            start_allocation=f.get("start_allocation", str_list, required=True),
            cancel_allocation=f.get("cancel_allocation", str_list, required=True),
            get_node_handles=f.get("get_node_handles", str_list, required=True),
            node_proxycommand=f.get("node_proxycommand", str_),
            execution=f.get("execution", str_list, ()))
    return fields


def _choice(options: tuple[str, ...]):
    def convert(value: Any, _: str) -> str:
        if value not in options:
            raise Bad(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return convert


def _env(value: Any, _: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise Bad(f"expected a mapping of NAME: value, got {kind_of(value)}")
    pairs = []
    for key, item in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            raise Bad(f"{key!r} is not a valid environment variable name")
        pairs.append((str(key), str_(item, "")))
    return tuple(pairs)


def _kill_grace(value: Any, where: str) -> float:
    """How long a stopped script has between SIGTERM and SIGKILL (a script that saves a
    checkpoint on SIGTERM needs the time it takes). At most 10 minutes: a cancel waits for it."""
    seconds = parse_duration(value, where)
    if seconds > 600:
        raise Bad(f"expected at most 10m, got {value!r}")
    return seconds


def parse_profile(data: Any, source: str, default_name: str = "profile") -> Profile:
    """Validate a profile given as parsed YAML; raises ProfileError naming the bad field."""
    f = Fields(data, source)
    scheduler = f.get("scheduler", lambda v, w: _scheduler(v, w, source), required=True)
    ssh = f.get("ssh", lambda v, w: _ssh(v, w, source))
    profile = Profile(
        name=f.get("name", str_, default_name),
        scheduler=scheduler,
        ssh=ssh,
        slots=f.get("slots", _slots, "cores"),
        directory=f.get("directory", str_, "~/.orchestra"),
        shared_filesystem=f.get("shared_filesystem", bool_, True),
        setup=f.get("setup", str_list, ()),
        env=f.get("env", _env, ()),
        reach=f.get("reach", _choice(REACH), "ssh"),
        agent=f.get("agent", _agent, "python3"),
        kill_grace=f.get("kill_grace", _kill_grace, 5.0),
        source=source,
    )
    f.done()
    _consistent(profile)
    return profile


def _consistent(profile: Profile) -> None:
    """Rules between fields, each with the field to fix."""
    kind, source = profile.scheduler.kind, profile.source
    if kind == "local" and profile.ssh is not None:
        raise ProfileError(source, "ssh", "a local profile runs on this machine; remove ssh")
    if kind in ("slurm", "sge", "pbs") and (profile.ssh is None or not profile.ssh.host):
        raise ProfileError(source, "ssh.host", f"a {kind} profile needs the login host where "
                           "its commands run")
    if profile.reach == "direct" and kind not in ("slurm", "sge", "pbs"):
        raise ProfileError(source, "reach", f"reach: direct skips the login host on the way "
                           f"to the nodes of slurm, sge and pbs profiles; {kind} has no such "
                           "hop: use reach: ssh")
    if profile.reach == "srun" and kind != "slurm":
        raise ProfileError(source, "reach", f"srun reaches nodes of slurm profiles only, not "
                           f"{kind}; use reach: ssh")
    if profile.slots == "gpus" and not profile.scheduler.gpus:
        raise ProfileError(source, "scheduler.gpus", "slots: gpus needs the number of GPUs per "
                           "node declared here")


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
    known = available_profiles()
    close = difflib.get_close_matches(name_or_path, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    found = f" (profiles found: {', '.join(known)})" if known else ""
    raise ProfileError(name_or_path, None,
                       f"no profile of that name in {places} or built in{found}{hint}")


def available_profiles() -> list[str]:
    """The names `load_profile` finds: files of the search path, then the built-in ones."""
    names: dict[str, None] = {}
    for folder in search_path():
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix in (".yml", ".yaml") and path.is_file():
                    names[path.stem] = None
    builtin = resources.files("liborchestra") / "builtin_profiles"
    for entry in sorted(builtin.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yml"):
            names[entry.name[:-4]] = None
    return list(names)


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
    from liborchestra import legacy

    if legacy.is_legacy(data):
        return legacy.parse_legacy(data, source)
    return parse_profile(data, source, name)
