"""Profiles and scripts shared by the tests (the test bed fixture lives in conftest.py)."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import yaml

from liborchestra.profile import Profile, load_profile

# Writes its argv NUL-separated, so a test can compare arguments byte for byte.
ARGV_SCRIPT = """\
#!/usr/bin/env bash
printf '%s\\0' "$@" > argv.bin
env | grep '^RUNAWAY_' | sort > env.txt
echo "on $(hostname)"
"""


def write_script(folder: Path, name: str, body: str, executable: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    path.chmod(0o755 if executable else 0o644)
    return path


def write_profile(folder: Path, name: str, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yml"
    path.write_text(yaml.safe_dump({"name": name, **data}, sort_keys=False))
    return path


def local_profile(tmp: Path, slots: int | str = 4, **extra) -> Path:
    return write_profile(tmp / "profiles", "loc", {
        "scheduler": {"kind": "local"}, "slots": slots, "directory": str(tmp / "remote"),
        **extra})


def ssh_options(testbed, **extra) -> dict:
    return {"user": testbed.user, "identity": [str(testbed.key)],
            "known_hosts": str(testbed.known_hosts), **extra}


def stock_profile(testbed, tmp: Path, slots: int = 4, **ssh) -> Path:
    """The 127.0.0.1 sshd with stock limits (MaxSessions 10)."""
    return write_profile(tmp / "profiles", "stock", {
        "ssh": ssh_options(testbed, **ssh),
        "scheduler": {"kind": "hosts",
                      "hosts": [{"host": "127.0.0.1", "port": testbed.local_port,
                                 "slots": slots}]},
        "directory": _remote_dir()})


def jump_profile(testbed, tmp: Path, nodes=("node1",), slots: int = 2) -> Path:
    """Nodes reached through `login` as a jump host."""
    return write_profile(tmp / "profiles", "jump", {
        "ssh": ssh_options(testbed, host="login"),
        "scheduler": {"kind": "hosts", "hosts": [{"host": n, "slots": slots} for n in nodes]},
        "directory": _remote_dir()})


def _remote_dir() -> str:
    """A fresh remote root per test, so nothing is cached from an earlier run."""
    return f"~/.orchestra-tests/{uuid.uuid4().hex}"


def load(path: Path) -> Profile:
    return load_profile(str(path))


def slurm_profile(testbed, tmp: Path, reach: str = "ssh", **scheduler) -> Path:
    """Slurm on the test bed: commands on `login`, nodes through it (ssh) or by srun steps."""
    return write_profile(tmp / "profiles", f"slurm-{reach}", {
        "ssh": ssh_options(testbed, host="login"),
        "scheduler": {"kind": "slurm", "nodes": 1, "walltime": "10m",
                      "options": ["--exclusive"], **scheduler},
        "reach": reach,
        "directory": _remote_dir()})


def wait_started(proc, count: int) -> None:
    """Read a `--json` runaway's events until `count` executions have started."""
    seen = 0
    while seen < count:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if json.loads(line)["event"] == "ExecutionStarted":
            seen += 1
