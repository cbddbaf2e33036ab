"""The README's command lines name profiles that exist (from the repository's root, as the
README says), and name only runaway subcommands that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from liborchestra.profile import load_profile
from runaway.cli import parser

REPO = Path(__file__).resolve().parents[2]
# the tools whose command lines take PROFILE as the first positional after the subcommand
WITH_PROFILE = {("runaway", "exec"), ("runaway", "batch"), ("runaway", "sched"),
                ("runaway", "check"), ("runaway", "clean"), ("expegit", "run")}


def _command_lines() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(("runaway ", "expegit ")):
                lines.append(shlex.split(line))
    return lines


def test_readme_profiles_exist(monkeypatch):
    monkeypatch.chdir(REPO)
    named = set()
    for words in _command_lines():
        if tuple(words[:2]) in WITH_PROFILE and len(words) > 2:
            named.add(words[2])
    named -= {"PROFILE"}  # the synopsis
    assert named, "no command line with a profile found in the README"
    for name in sorted(named):
        assert load_profile(name).name == name


def test_readme_runaway_subcommands_exist():
    known = set(parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    used = {w[1].split("|")[0] for w in _command_lines() if w[0] == "runaway" and len(w) > 1}
    assert used <= known, used - known
    assert {"logs", "clean"} <= used
