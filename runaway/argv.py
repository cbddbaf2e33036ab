"""The command lines of every tool: everything after the first `--` is the script's."""

from __future__ import annotations


def split_script_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the tool's arguments, the script's): the script's come after the first `--`, verbatim
    (argparse would mix them up with options given after the positionals)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]
