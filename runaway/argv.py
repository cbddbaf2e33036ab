"""The command lines of every tool: everything after the first `--` is the script's."""

from __future__ import annotations

import argparse


def split_script_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the tool's arguments, the script's): the script's come after the first `--`, verbatim
    (argparse would mix them up with options given after the positionals)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def add_version(parser: argparse.ArgumentParser, tool: str) -> None:
    """`--version`, the distribution's version looked up only when asked (it costs 20 ms of
    every command's start: importlib.metadata reads the installed distributions)."""
    parser.add_argument("--version", action=_Version, tool=tool,
                        help="show the version and exit")


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, tool: str = "",
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)
        self.tool = tool

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import liborchestra

        print(f"{self.tool} {liborchestra.__version__}")
        parser.exit()
