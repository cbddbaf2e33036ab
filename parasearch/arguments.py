"""Priors written in the script's own arguments, as Oríon writes them.

`--lr~'loguniform(1e-5, 1.0)'` declares the dimension `lr` and reaches the script as the one
argument `--lr=VALUE`; every other argument passes verbatim (data, never shell).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from parasearch.space import Space, SpaceError

_PRIOR_ARG = re.compile(r"^(-{1,2})([A-Za-z_][\w./-]*)~(.*)$", re.S)


@attrs.frozen
class Template:
    """The script's arguments with a hole for each dimension."""

    parts: tuple[tuple[str, str | None], ...]  # (verbatim text, None) or (flag, dimension)

    def render(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(text if name is None else f"{text}={format_value(params[name])}"
                     for text, name in self.parts)

    @property
    def dimensions(self) -> list[str]:
        return [name for _, name in self.parts if name is not None]


def split_arguments(args: Sequence[str]) -> tuple[Template, list[str]]:
    """The template and the `name~prior(...)` texts of the arguments that declare one."""
    parts: list[tuple[str, str | None]] = []
    priors: list[str] = []
    for arg in args:
        match = _PRIOR_ARG.match(arg)
        if match is None:
            parts.append((arg, None))
            continue
        dashes, name, prior = match.groups()
        parts.append((dashes + name, name))
        priors.append(f"{name}~{prior}")
    return Template(tuple(parts)), priors


def search_space(args: Sequence[str],
                 space_file: str | None = None) -> tuple[Template, Space, list[str]]:
    """The template, the space and its `name~prior` texts: from the arguments' priors, or
    from `space_file` (whose dimensions then reach the script as `--NAME=VALUE` after its own
    arguments)."""
    template, priors = split_arguments(args)
    if space_file is not None:
        if priors:
            raise SpaceError(priors[0].split("~", 1)[0],
                             "priors are given both in the arguments and in --space")
        try:
            priors = Space.yaml_priors(space_file)
        except OSError as error:
            raise SpaceError("--space", f"cannot read {space_file}: {error.strerror}") from None
        space = Space.parse(priors)
        extra = tuple((f"--{name}", name) for name in space.names)
        return Template(template.parts + extra), space, priors
    if not priors:
        raise SpaceError("?", "no dimension to search: give an argument like "
                              "--lr~'loguniform(1e-5, 1)' or --space FILE.yml")
    return template, Space.parse(priors), priors


def format_value(value: Any) -> str:
    """A parameter as the script sees it: integers plainly, floats in full precision."""
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    return repr(value) if isinstance(value, float) else str(value)
