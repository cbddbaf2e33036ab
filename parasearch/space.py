"""Search spaces written as Orion-style priors: ``lr~loguniform(1e-5, 1.0)``.

A space is an ordered set of named dimensions. Priors come from the command line
(``Space.parse``) or a YAML file (``Space.from_yaml``). The prior text is parsed with
``ast`` and validated, never evaluated, so user text cannot run code.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "Categorical",
    "Dimension",
    "Fidelity",
    "Integer",
    "Normal",
    "Real",
    "Space",
    "SpaceError",
]


class SpaceError(ValueError):
    """A prior that cannot define a dimension; the message names the dimension."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"dimension {name!r}: {problem}")
        self.name = name
        self.problem = problem


_NO_DEFAULT: Any = None


@attrs.frozen
class Real:
    """A float in [low, high], sampled uniformly on a linear or a log scale."""

    name: str
    low: float
    high: float
    log: bool = False
    default: float | None = _NO_DEFAULT

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= float(value) <= self.high


@attrs.frozen
class Integer:
    """An int in [low, high], both ends included, on a linear or a log scale."""

    name: str
    low: int
    high: int
    log: bool = False
    default: int | None = _NO_DEFAULT

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


@attrs.frozen
class Normal:
    """An unbounded float (or int when discrete) with a normal prior N(mu, sigma²)."""

    name: str
    mu: float
    sigma: float
    discrete: bool = False
    default: float | None = _NO_DEFAULT

    def contains(self, value: Any) -> bool:
        if self.discrete:
            return isinstance(value, int)
        return isinstance(value, (int, float)) and math.isfinite(value)


@attrs.frozen
class Categorical:
    """One of a fixed set of choices, with prior probabilities (uniform when not given)."""

    name: str
    choices: tuple[Any, ...]
    probs: tuple[float, ...]
    default: Any = _NO_DEFAULT

    def contains(self, value: Any) -> bool:
        return any(_same_choice(value, c) for c in self.choices)

    def index(self, value: Any) -> int:
        for i, choice in enumerate(self.choices):
            if _same_choice(value, choice):
                return i
        raise SpaceError(self.name, f"{value!r} is not one of {list(self.choices)!r}")


@attrs.frozen
class Fidelity:
    """A budget dimension (epochs, data size) for multi-fidelity samplers; not searched here.

    Single-fidelity samplers always set it to ``high``, the full budget.
    """

    name: str
    low: int | float
    high: int | float
    base: float = 2.0
    default: int | float | None = _NO_DEFAULT

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high


Dimension = Real | Integer | Normal | Categorical | Fidelity


def _same_choice(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@attrs.frozen
class Space:
    """An ordered collection of dimensions with unique names."""

    dimensions: tuple[Dimension, ...]

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for dim in self.dimensions:
            if dim.name in seen:
                raise SpaceError(dim.name, "defined twice")
            seen.add(dim.name)
        if not self.dimensions:
            raise ValueError("a search space needs at least one dimension")

    @classmethod
    def parse(cls, priors: Iterable[str]) -> Space:
        """Build a space from ``name~prior(...)`` strings, as given on a command line."""
        dims = []
        for text in priors:
            if "~" not in text:
                raise SpaceError(text.strip() or "?", "expected 'name~prior(...)'")
            name, prior = text.split("~", 1)
            dims.append(parse_prior(name.strip(), prior))
        return cls(tuple(dims))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Space:
        """Build a space from a YAML file.

        Either a mapping ``name: prior`` (nested mappings give ``outer/inner`` names, and a
        prior may start with ``~`` or ``orion~``) or a list of ``name~prior`` strings.
        """
        return cls.parse(cls.yaml_priors(path))

    @staticmethod
    def yaml_priors(path: str | Path) -> list[str]:
        """The ``name~prior(...)`` texts of a YAML space file (see ``from_yaml``)."""
        import yaml

        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
        if isinstance(data, Mapping) and set(data) == {"space"}:
            data = data["space"]
        if isinstance(data, list):
            return [str(item) for item in data]
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping of name: prior, or a list of priors")
        return [f"{name}~{prior}" for name, prior in _flatten(data, "")]

    def __iter__(self):
        return iter(self.dimensions)

    def __len__(self) -> int:
        return len(self.dimensions)

    def __getitem__(self, name: str) -> Dimension:
        for dim in self.dimensions:
            if dim.name == name:
                return dim
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [dim.name for dim in self.dimensions]

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` names exactly this space's dimensions, each within its prior."""
        if set(params) != set(self.names):
            return False
        return all(dim.contains(params[dim.name]) for dim in self.dimensions)

    def defaults(self) -> dict[str, Any]:
        """The ``default_value=`` given for each dimension that has one."""
        return {d.name: d.default for d in self.dimensions if d.default is not None}


def _flatten(data: Mapping, prefix: str) -> list[tuple[str, str]]:
    items = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, name + "/"))
        else:
            text = str(value).strip()
            if text.startswith("orion~"):
                text = text[len("orion~") :]
            items.append((name, text.lstrip("~")))
    return items


_PRIORS = ("uniform", "loguniform", "randint", "normal", "gaussian", "choices", "fidelity")


def parse_prior(name: str, text: str) -> Dimension:
    """Parse one prior call such as ``uniform(0, 1, discrete=True)`` for dimension ``name``."""
    if not name or not name.replace("/", "").replace(".", "").replace("-", "_").isidentifier():
        raise SpaceError(name, "a dimension name must be a non-empty identifier")
    args, kwargs, prior = _parse_call(name, text)
    default = kwargs.pop("default_value", None)
    try:
        if prior in ("uniform", "loguniform", "randint"):
            dim = _bounded(name, prior, args, kwargs, default)
        elif prior in ("normal", "gaussian"):
            dim = _normal(name, args, kwargs, default)
        elif prior == "choices":
            dim = _choices(name, args, kwargs, default)
        else:
            dim = _fidelity(name, args, kwargs, default)
    except TypeError as err:
        raise SpaceError(name, f"bad arguments to {prior}(): {err}") from None
    if default is not None and not dim.contains(default):
        raise SpaceError(name, f"default_value {default!r} is outside the prior")
    return dim


def _parse_call(name: str, text: str) -> tuple[list[Any], dict[str, Any], str]:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise SpaceError(name, f"cannot parse prior {text.strip()!r}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise SpaceError(name, f"expected a prior call like uniform(0, 1), got {text.strip()!r}")
    prior = call.func.id
    if prior not in _PRIORS:
        raise SpaceError(name, f"unknown prior {prior!r}; known: {', '.join(_PRIORS)}")
    try:
        args = [ast.literal_eval(arg) for arg in call.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except ValueError:
        raise SpaceError(name, f"prior arguments must be literals in {text.strip()!r}") from None
    if len(kwargs) != len(call.keywords):
        raise SpaceError(name, "**kwargs are not allowed in a prior")
    return args, kwargs, prior


def _number(name: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(name, f"{what} must be a finite number, got {value!r}")
    return value


def _bounded(name: str, prior: str, args: list, kwargs: dict, default: Any) -> Dimension:
    def bounds(low: Any, high: Any, discrete: bool = False, precision: Any = None):
        return _number(name, "low", low), _number(name, "high", high), bool(discrete)

    low, high, discrete = bounds(*args, **kwargs)
    if prior == "randint":
        discrete = True
    log = prior == "loguniform"
    if low >= high:
        raise SpaceError(name, f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SpaceError(name, f"loguniform needs positive bounds, got low={low}")
    if not discrete:
        return Real(name, float(low), float(high), log, default)
    ilow, ihigh = math.ceil(low), math.floor(high)
    if ilow > ihigh or (ilow == ihigh and prior != "randint"):
        raise SpaceError(name, f"no two integers in [{low}, {high}]")
    return Integer(name, ilow, ihigh, log, default)


def _normal(name: str, args: list, kwargs: dict, default: Any) -> Normal:
    def params(loc: Any, scale: Any, discrete: bool = False, precision: Any = None):
        return _number(name, "mu", loc), _number(name, "sigma", scale), bool(discrete)

    mu, sigma, discrete = params(*args, **kwargs)
    if sigma <= 0:
        raise SpaceError(name, f"sigma must be positive, got {sigma}")
    return Normal(name, float(mu), float(sigma), discrete, default)


def _choices(name: str, args: list, kwargs: dict, default: Any) -> Categorical:
    if kwargs:
        raise SpaceError(name, f"choices() takes no keyword {sorted(kwargs)[0]!r}")
    nested = len(args) == 1 and isinstance(args[0], (list, tuple, dict))
    options = args[0] if nested else args
    if not options:
        raise SpaceError(name, "choices() needs at least one choice")
    if isinstance(options, dict):
        choices = tuple(options)
        weights = [_number(name, f"probability of {c!r}", options[c]) for c in choices]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise SpaceError(name, "choice probabilities must be non-negative, not all zero")
        if abs(sum(weights) - 1.0) > 1e-6:
            raise SpaceError(name, f"choice probabilities sum to {sum(weights)}, not 1")
        probs = tuple(w / sum(weights) for w in weights)
    else:
        choices = tuple(options)
        probs = tuple(1.0 / len(choices) for _ in choices)
    for i, choice in enumerate(choices):
        if any(_same_choice(choice, other) for other in choices[:i]):
            raise SpaceError(name, f"choice {choice!r} appears twice")
    return Categorical(name, choices, probs, default)


def _fidelity(name: str, args: list, kwargs: dict, default: Any) -> Fidelity:
    def params(low: Any, high: Any, base: Any = 2):
        return _number(name, "low", low), _number(name, "high", high), _number(name, "base", base)

    low, high, base = params(*args, **kwargs)
    if low <= 0 or low >= high:
        raise SpaceError(name, f"fidelity needs 0 < low < high, got low={low}, high={high}")
    if base <= 1:
        raise SpaceError(name, f"fidelity base must exceed 1, got {base}")
    return Fidelity(name, low, high, float(base), default)


def describe(dims: Sequence[Dimension]) -> str:
    """A one-line summary of dimensions, for messages."""
    return ", ".join(f"{type(d).__name__.lower()} {d.name}" for d in dims)
