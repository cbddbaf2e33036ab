"""The sweep options every tool that runs sweeps takes (`runaway batch`, `expegit run`), and
their parsing into one `params.Sweep`.

`--param` grids combine with a template (or `-A` file, or `--configs`) as a product: every
grid point with every template point, the grid slowest."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterator

import attrs

from liborchestra import params
from liborchestra.execution import ARGUMENTS_LIMIT, arguments_problem

_COMMA_GROUP = re.compile(r"\{[^{};]*,[^{};]*\}")


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep options of `runaway batch`; every tool that runs sweeps takes the same."""
    p.add_argument("template", nargs="*", metavar="TEMPLATE",
                   help="after `--`: an argument template, e.g. --lr={0.1;0.01} (alternatives "
                        "are separated by `;`)")
    p.add_argument("-A", "--arguments-file", type=Path,
                   help="one template per line; executions start in file order (first come, "
                        "first served; they may finish in any order)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2",
                   help="a grid dimension, passed as --NAME=V (repeat the option); combined "
                        "with a template, -A or --configs as a product (every grid point "
                        "with every one of theirs)")
    p.add_argument("--configs", type=Path, metavar="DIR",
                   help="one execution per file of DIR; the template uses %%IN, %%OUT, %%DATA")
    p.add_argument("--data", help="the path %%DATA stands for")
    p.add_argument("-x", "--repeats", type=int, default=1, help="run each point N times")


@attrs.frozen(eq=False)
class _Product:
    """Every point of `outer` with every point of `inner`, outer slowest (a params.Source)."""

    outer: params.Sweep
    inner: params.Sweep

    @property
    def count(self) -> int:
        return self.outer.count * self.inner.count

    def entries(self, start: int) -> Iterator[tuple[tuple[str, ...], str]]:
        if not self.inner.count:
            return
        first, skip = divmod(start, self.inner.count)
        if first >= self.outer.count:
            return
        for k, left in enumerate(self.outer.iter_from(first)):
            for right in self.inner.iter_from(skip if k == 0 else 0):
                yield left.argv + right.argv, " ".join(filter(None, (left.label, right.label)))


def sweep_from_args(args: argparse.Namespace) -> params.Sweep:
    """The sweep of `add_sweep_arguments`' options; every problem is a ParamsError before
    anything runs."""
    text = " ".join(args.template)
    if args.configs:
        base = params.config_dir(args.configs, text or "%IN", args.data)
    elif args.arguments_file:
        base = params.arguments_file(args.arguments_file)
        if text:
            base = _product(base, params.template(text))
    else:
        base = params.template(text)
    if args.param:
        base = _product(params.param_grid(args.param, "--param"), base)
    if _longest(args) > ARGUMENTS_LIMIT:  # then look at each point (100,000 take seconds)
        for point in base:
            problem = arguments_problem(point.argv)
            if problem is not None:
                label = point.label if len(point.label) <= 60 else point.label[:57] + "..."
                raise params.ParamsError(f"execution {point.index + 1} ({label}): {problem}")
    return base.repeat(args.repeats)


def _longest(args: argparse.Namespace) -> int:
    """More than one execution's arguments can be once quoted, in bytes: each takes at most
    each part of what it is made of once (config paths are short), and quoting at most
    quintuples a byte."""
    size = len(" ".join([*args.template, *args.param]).encode()) + 4096
    if args.arguments_file:
        try:
            with open(args.arguments_file, "rb") as f:
                size += max((len(line) for line in f), default=0)
        except OSError:
            pass  # said by the sweep, already made
    return 5 * size


def _product(outer: params.Sweep, inner: params.Sweep) -> params.Sweep:
    ship = params.Sweep.chain(outer, inner).ship  # what both ship must not clash
    return attrs.evolve(params.Sweep.of(_Product(outer, inner)), shipped=tuple(ship.items()))


def sweep_warnings(args: argparse.Namespace) -> list[str]:
    """Likely mistakes that are still valid sweeps: `{0.1,0.01}` is one value, not two."""
    out = []
    for match in _COMMA_GROUP.finditer(" ".join(args.template)):
        group = match.group(0)
        out.append(f"{group} is one value: alternatives are separated by `;` "
                   f"({group.replace(',', ';')})")
    return out


def sweep_spec(args: argparse.Namespace) -> dict[str, object]:
    """The sweep options as given, kept in the journal so `--resume` can tell a different
    sweep from the same one."""
    def path(p: Path | None) -> str | None:
        return str(p.resolve()) if p else None

    return {"template": " ".join(args.template), "arguments_file": path(args.arguments_file),
            "param": list(args.param), "configs": path(args.configs), "data": args.data,
            "repeats": args.repeats}


def sweep_given(args: argparse.Namespace) -> bool:
    return bool(args.template or args.arguments_file or args.param or args.configs
                or args.repeats != 1)
