"""Parameter sweeps: what `runaway batch` runs, one argv per execution.

Sources are templates (`--lr={0.1;0.01}`, or the original `--lr= + {0.1;0.01}`), an arguments
file (one template per line, in file order), a parameter grid (`lr=0.1,0.01`) and a directory of
configuration files (`%IN`, `%OUT`, `%DATA`). A `Sweep` chains them and repeats them. Everything is
lazy with an exact `count`, and `iter_from(index)` computes where to resume instead of replaying,
so 100,000+ executions cost O(1) memory. Arguments are data: they are split with `shlex` into an
argv and never reach a shell.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence, TypeVar

import attrs

from liborchestra.errors import OrchestraError

T = TypeVar("T")

CONFIGS = "_configs"  # name of the shipped configuration directory inside the run folder
OUTPUTS = "out"  # %OUT of a configuration file is OUTPUTS/<file stem>
_QUOTES = "'\""
_PERCENT = re.compile(r"%(IN|OUT|DATA)")


class ParamsError(OrchestraError):
    """A template, arguments file, grid spec or config directory is invalid; says where and why."""


class _Bad(Exception):
    """A template error at a 0-based position; the caller adds where the template came from."""

    def __init__(self, position: int, what: str) -> None:
        super().__init__(what)
        self.position, self.what = position, what


def argv(arg_string: str) -> list[str]:
    """Split an argument string into words like a shell would, without ever running one."""
    try:
        return shlex.split(arg_string)
    except ValueError as error:
        raise ParamsError(f"arguments {arg_string!r}: {error}") from None


def _combinations(parts: Sequence[Sequence[T]], start: int) -> Iterator[tuple[T, ...]]:
    """Nested-loop order (first part slowest) from `start`, decoded from the index, not replayed.

    After the starting combination, the rest is a few `itertools.product` tails: the remaining
    choices of the last part, then of the one before with everything after it free, and so on.
    """
    digits: list[int] = []
    for choices in reversed(parts):
        start, digit = divmod(start, len(choices))
        digits.append(digit)
    if start:
        return  # past the end
    digits.reverse()
    if not parts:
        yield ()
        return
    last = len(parts) - 1
    for k in range(last, -1, -1):
        prefix = tuple(parts[j][digits[j]] for j in range(k))
        first = digits[k] + (k != last)
        for tail in itertools.product(parts[k][first:], *parts[k + 1:]):
            yield prefix + tail


def _scan(text: str) -> tuple[list[bool], dict[int, int]]:
    """Mark characters that may be syntax (unquoted, unescaped); map each quote to its closing.

    Quoting follows `shlex` (POSIX) exactly, so every fragment we cut stays valid shell words.
    """
    plain, spans, i, n = [False] * len(text), {}, 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            if i + 1 == n:
                raise _Bad(i, "'\\' at the end escapes nothing")
            i += 2
        elif char in _QUOTES:
            j = i + 1
            while j < n and text[j] != char:
                j += 2 if char == '"' and text[j] == "\\" else 1
            if j >= n:
                raise _Bad(i, f"quote {char} is never closed")
            spans[i], i = j, j + 1
        else:
            plain[i], i = True, i + 1
    return plain, spans


def _parse(text: str) -> tuple[tuple[str, ...], ...]:
    """Template text -> parts, each a tuple of alternatives (a literal is a 1-tuple)."""
    plain, spans = _scan(text)
    n = len(text)

    def blank(i: int) -> bool:
        return i < 0 or i >= n or (plain[i] and text[i].isspace())

    def trim(lo: int, hi: int) -> tuple[int, int]:
        while lo < hi and blank(lo):
            lo += 1
        while hi > lo and blank(hi - 1):
            hi -= 1
        return lo, hi

    opened: int | None = None
    separators: list[int] = []
    for i, char in enumerate(text):
        if not plain[i]:
            continue
        if char == "{":
            if opened is not None:
                raise _Bad(i, "'{' inside a group: groups do not nest (write \\{ for a brace)")
            opened = i
        elif char == "}":
            if opened is None:
                raise _Bad(i, "'}' without a '{' before it (write \\} for a brace)")
            opened = None
        elif char == "+" and opened is None and blank(i - 1) and blank(i + 1):
            separators.append(i)
    if opened is not None:
        raise _Bad(opened, "'{' is never closed: expected '}'")

    parts: list[tuple[str, ...]] = []
    bounds = zip([-1, *separators], [*separators, n], strict=True)
    for k, (before, after) in enumerate(bounds):
        lo, hi = trim(before + 1, after)
        if lo == hi and separators:
            side = "left" if k == 0 else "right"
            raise _Bad(after if k == 0 else before, f"' + ' has nothing on its {side}")
        if lo < hi and text[lo] in _QUOTES and spans[lo] == hi - 1:
            # The original's quoted part: quotes removed, contents literal; only spaces split words.
            literal = shlex.split(text[lo:hi])[0]
            parts.append((re.sub(r"(['\"\\])", r"\\\1", literal),))
            continue
        start = j = lo
        while j < hi:
            if not (plain[j] and text[j] == "{"):
                j += 1
                continue
            parts.append((text[start:j],))
            close = next(c for c in range(j + 1, hi) if plain[c] and text[c] == "}")
            cuts = [c for c in range(j + 1, close) if plain[c] and text[c] == ";"]
            ends = zip([j, *cuts], [*cuts, close], strict=True)
            alternatives = tuple(text[slice(*trim(a + 1, b))] for a, b in ends)
            if alternatives == ("",):
                raise _Bad(j, "empty group: expected alternatives like {a;b}")
            parts.append(alternatives)
            start = j = close + 1
        parts.append((text[start:hi],))
    merged: list[tuple[str, ...]] = []
    for part in parts:
        if len(part) == 1 and merged and len(merged[-1]) == 1:
            merged[-1] = (merged[-1][0] + part[0],)
        elif part != ("",):
            merged.append(part)
    return tuple(merged)


@attrs.frozen
class Template:
    """One template: the cartesian product of its groups, concatenated, as argument strings."""

    text: str
    parts: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str, where: str | None = None) -> Template:
        """Parse now so a bad template fails before anything is allocated or run."""
        try:
            return cls(text, _parse(text))
        except _Bad as bad:
            place = where if where is not None else f"template {text!r}"
            raise ParamsError(f"{place}: column {bad.position + 1}: {bad.what}") from None

    @property
    def count(self) -> int:
        return math.prod(map(len, self.parts))

    def expand(self, start: int = 0) -> Iterator[str]:
        """The argument strings, first group slowest, from combination `start` on."""
        return ("".join(combo) for combo in _combinations(self.parts, start))

    def entries(self, start: int) -> Iterator[tuple[tuple[str, ...], str]]:
        return ((tuple(shlex.split(label)), label) for label in self.expand(start))


@attrs.frozen
class _Grid:
    """`--name=value` words for every combination of the named value lists."""

    parts: tuple[tuple[str, ...], ...]

    @property
    def count(self) -> int:
        return math.prod(map(len, self.parts))

    def entries(self, start: int) -> Iterator[tuple[tuple[str, ...], str]]:
        return ((combo, shlex.join(combo)) for combo in _combinations(self.parts, start))


@attrs.frozen
class _Configs:
    """One execution per configuration file; %IN/%OUT/%DATA filled in per argv word."""

    words: tuple[str, ...]
    files: tuple[str, ...]
    data: str | None

    @property
    def count(self) -> int:
        return len(self.files)

    def entries(self, start: int) -> Iterator[tuple[tuple[str, ...], str]]:
        for k in range(start, len(self.files)):
            name = self.files[k]
            values = {"IN": f"{CONFIGS}/{name}", "OUT": f"{OUTPUTS}/{Path(name).stem}",
                      "DATA": self.data or ""}
            words = tuple(_fill(word, values) for word in self.words)
            yield words, shlex.join(words)


def _fill(word: str, values: dict[str, str]) -> str:
    """One pass, so a file named `%OUT.json` is not substituted twice."""
    return _PERCENT.sub(lambda match: values[match[1]], word)


class Source(Protocol):
    """What a Sweep chains: an exact count and (argv, label) pairs from an index on."""

    @property
    def count(self) -> int: ...

    def entries(self, start: int) -> Iterator[tuple[tuple[str, ...], str]]: ...


@attrs.frozen
class Point:
    """One execution: its position in the sweep, its argv, a display label and repeat number."""

    index: int
    argv: tuple[str, ...]
    label: str
    repeat: int = 0


@attrs.frozen(eq=False)
class Sweep:
    """Sources in order, each point repeated; lazy, with an exact count and cheap resume."""

    blocks: tuple[tuple[Source, int], ...] = ()  # (source, repeats of each of its points)
    shipped: tuple[tuple[str, Path], ...] = ()  # (name in the run folder, local path)

    @classmethod
    def of(cls, *sources: Source) -> Sweep:
        return cls(tuple((source, 1) for source in sources))

    @classmethod
    def chain(cls, *sweeps: Sweep) -> Sweep:
        """Run the sweeps one after the other; what they ship must not clash."""
        ship: dict[str, Path] = {}
        for sweep in sweeps:
            for name, path in sweep.shipped:
                if ship.setdefault(name, path) != path:
                    raise ParamsError(f"cannot chain {ship[name]} and {path}: both ship as {name}")
        blocks = tuple(block for sweep in sweeps for block in sweep.blocks)
        return cls(blocks, tuple(ship.items()))

    @property
    def ship(self) -> dict[str, Path]:
        """Local paths the batch must send into the run folder, by their name there."""
        return dict(self.shipped)

    @property
    def count(self) -> int:
        return sum(source.count * repeats for source, repeats in self.blocks)

    def repeat(self, times: int) -> Sweep:
        """`-x N`: every point N times in a row (repeat 0..N-1), e.g. for random seeds."""
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ParamsError(f"-x/--repeats: expected a whole number >= 1, got {times!r}")
        blocks = tuple((source, repeats * times) for source, repeats in self.blocks)
        return attrs.evolve(self, blocks=blocks)

    def __iter__(self) -> Iterator[Point]:
        return self._points(0)

    def iter_from(self, index: int) -> Iterator[Point]:
        """Points from `index` on (to resume): jumps there by arithmetic, skipping nothing."""
        if index < 0 or index > self.count:
            raise ParamsError(f"resume index {index}: expected 0 to {self.count}")
        return self._points(index)

    def _points(self, index: int) -> Iterator[Point]:
        offset = 0
        for source, repeats in self.blocks:
            size = source.count * repeats
            if index >= offset + size:
                offset += size
                continue
            local = max(index - offset, 0)
            position = offset + local
            point, first = divmod(local, repeats)
            for words, label in source.entries(point):
                for repeat in range(first, repeats):
                    yield Point(position, words, label, repeat)
                    position += 1
                first = 0
            offset += size


def template(text: str) -> Sweep:
    """The sweep of one template (`runaway batch ... -- TEMPLATE`)."""
    return Sweep.of(Template.parse(text))


def arguments_file(path: str | Path) -> Sweep:
    """`-A FILE`: one template per line, in file order; blank lines and `#` comments skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such arguments file") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: expected UTF-8 text") from None
    except OSError as error:
        raise ParamsError(f"{path}: cannot read the arguments file: {error.strerror}") from None
    templates = [
        Template.parse(line, where=f"{path}:{number}")
        for number, line in enumerate(lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not templates:
        raise ParamsError(f"{path}: expected at least one template (only blanks and comments)")
    return Sweep.of(*templates)


def param_grid(specs: Iterable[str], option: str = "parameter") -> Sweep:
    """`NAME=V1,V2` specs -> every combination as `--NAME=V` words (first spec slowest).

    Values are taken verbatim (no quote processing); `option` names the CLI flag in errors.
    """
    parts: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for spec in specs:
        where = f"{option} {spec!r}"
        name, equal, values = spec.partition("=")
        if not equal:
            raise ParamsError(f"{where}: expected NAME=VALUE[,VALUE...] (no '=')")
        if not name:
            raise ParamsError(f"{where}: expected a name before '='")
        if name.startswith("-") or any(char.isspace() for char in name):
            raise ParamsError(f"{where}: expected a name without spaces or leading '-'")
        if not values:
            raise ParamsError(f"{where}: expected values after '=' (VALUE[,VALUE...])")
        choices = values.split(",")
        if "" in choices:
            raise ParamsError(f"{where}: value {choices.index('') + 1} is empty")
        if name in seen:
            raise ParamsError(f"{where}: parameter {name!r} is given twice")
        seen.add(name)
        parts.append(tuple(f"--{name}={value}" for value in choices))
    if not parts:
        raise ParamsError(f"{option}: expected at least one NAME=VALUE[,VALUE...]")
    return Sweep.of(_Grid(tuple(parts)))


def config_dir(directory: str | Path, template: str, data: str | None = None) -> Sweep:
    """One execution per configuration file (sorted, hidden skipped), jodafons/orchestra style.

    In the argument template, `%IN` is the file as the remote sees it (`_configs/<name>`, the
    directory is shipped under that name), `%OUT` is `out/<stem>` and `%DATA` is `data`.
    """
    directory = Path(directory)
    try:
        words = tuple(shlex.split(template))
    except ValueError as error:
        raise ParamsError(f"template {template!r}: {error}") from None
    if not any("%IN" in word for word in words):
        raise ParamsError(f"template {template!r}: expected %IN (each execution's config file)")
    if data is None and any("%DATA" in word for word in words):
        raise ParamsError(f"template {template!r}: uses %DATA but no data path was given")
    if not directory.is_dir():
        state = "is not a directory" if directory.exists() else "no such directory"
        raise ParamsError(f"{directory}: {state} (expected a directory of config files)")
    try:
        files = sorted(e.name for e in directory.iterdir()
                       if not e.name.startswith(".") and e.is_file())
    except OSError as error:
        raise ParamsError(f"{directory}: cannot list: {error.strerror}") from None
    if not files:
        raise ParamsError(f"{directory}: expected config files (hidden files are skipped)")
    stems: dict[str, str] = {}
    for name in files:
        other = stems.setdefault(Path(name).stem, name)
        if other != name:
            raise ParamsError(f"{directory}: {other} and {name} would share the output "
                              f"{OUTPUTS}/{Path(name).stem}; rename one")
    sweep = Sweep.of(_Configs(words, tuple(files), data))
    return attrs.evolve(sweep, shipped=((CONFIGS, directory),))


__all__ = ["ParamsError", "Point", "Source", "Sweep", "Template", "argv", "arguments_file",
           "config_dir", "param_grid", "template"]
