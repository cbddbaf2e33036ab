"""Parsing priors into search spaces, and rejecting bad ones with a clear message."""

import math

import pytest

from parasearch.space import Categorical, Fidelity, Integer, Normal, Real, Space, SpaceError


def test_parses_every_prior_kind():
    space = Space.parse(
        [
            "lr~loguniform(1e-5, 1.0)",
            "momentum~uniform(0, 1)",
            "layers~uniform(1, 8, discrete=True)",
            "units~randint(1, 8)",
            "noise~normal(0, 1)",
            "act~choices(['relu', 'tanh'])",
            "opt~choices({'adam': 0.8, 'sgd': 0.2})",
            "epochs~fidelity(1, 81, base=3)",
        ]
    )
    assert space["lr"] == Real("lr", 1e-5, 1.0, log=True)
    assert space["momentum"] == Real("momentum", 0.0, 1.0)
    assert space["layers"] == Integer("layers", 1, 8)
    assert space["units"] == Integer("units", 1, 8)
    assert space["noise"] == Normal("noise", 0.0, 1.0)
    assert space["act"] == Categorical("act", ("relu", "tanh"), (0.5, 0.5))
    assert space["opt"] == Categorical("opt", ("adam", "sgd"), (0.8, 0.2))
    assert space["epochs"] == Fidelity("epochs", 1, 81, 3.0)
    assert space.names == ["lr", "momentum", "layers", "units", "noise", "act", "opt", "epochs"]


def test_default_values_and_spacing():
    space = Space.parse(
        [
            " lr ~ loguniform(1e-4, 1e-1, default_value=0.01) ",
            "act~choices(['relu', 'tanh'], default_value='tanh')",
            "n~loguniform(1, 1024, discrete=True)",
            "x~uniform(-1, 1)",
        ]
    )
    assert space.defaults() == {"lr": 0.01, "act": "tanh"}
    assert space["n"] == Integer("n", 1, 1024, log=True)
    assert space["x"].default is None


def test_choices_as_arguments_and_mixed_types():
    space = Space.parse(["b~choices(1, 2.5, 'x', True, None)"])
    assert space["b"].choices == (1, 2.5, "x", True, None)
    assert space["b"].contains(True) and not space["b"].contains(1.0)


def test_from_yaml_mapping_nested_and_list(tmp_path):
    mapping = tmp_path / "space.yaml"
    mapping.write_text(
        "lr: 'orion~loguniform(1e-5, 1.0)'\n"
        "model:\n  layers: uniform(1, 4, discrete=True)\n  act: ~choices(['relu', 'tanh'])\n"
    )
    space = Space.from_yaml(mapping)
    assert space.names == ["lr", "model/layers", "model/act"]
    assert space["model/layers"] == Integer("model/layers", 1, 4)
    listed = tmp_path / "list.yaml"
    listed.write_text("space:\n  - x~uniform(0, 1)\n  - y~normal(0, 2)\n")
    assert Space.from_yaml(listed).names == ["x", "y"]


@pytest.mark.parametrize(
    ("prior", "problem"),
    [
        ("x~beta(1, 2)", "unknown prior 'beta'"),
        ("x~uniform(1, 1)", "low (1) must be below high (1)"),
        ("x~uniform(2, 1)", "must be below high"),
        ("x~loguniform(0, 1)", "positive bounds"),
        ("x~loguniform(-1, 1)", "positive bounds"),
        ("x~choices([])", "at least one choice"),
        ("x~choices({})", "at least one choice"),
        ("x~uniform(0, 1", "cannot parse"),
        ("x~uniform(0, 1) + 1", "expected a prior call"),
        ("x~uniform(0, __import__('os'))", "must be literals"),
        ("x~uniform('a', 1)", "low must be a finite number"),
        ("x~uniform(0, 1, bogus=2)", "bad arguments to uniform()"),
        ("x~normal(0, 0)", "sigma must be positive"),
        ("x~choices({'a': 0.5, 'b': 0.2})", "sum to"),
        ("x~choices(['a', 'a'])", "appears twice"),
        ("x~uniform(0.2, 0.8, discrete=True)", "no two integers"),
        ("x~fidelity(10, 1)", "0 < low < high"),
        ("x~fidelity(1, 10, base=1)", "base must exceed 1"),
        ("x~uniform(0, 1, default_value=2)", "default_value 2 is outside"),
        ("x~choices(['a'], default_value='b')", "outside the prior"),
        ("x uniform(0, 1)", "expected 'name~prior(...)'"),
        ("~uniform(0, 1)", "non-empty identifier"),
    ],
)
def test_bad_priors_raise_one_clear_error(prior, problem):
    with pytest.raises(SpaceError) as info:
        Space.parse([prior])
    assert problem in str(info.value)
    assert str(info.value).startswith("dimension ")


def test_duplicate_names_are_rejected():
    with pytest.raises(SpaceError, match="'x': defined twice"):
        Space.parse(["x~uniform(0, 1)", "x~uniform(0, 2)"])


def test_no_code_runs_from_prior_text():
    with pytest.raises(SpaceError):
        Space.parse(["x~uniform(0, (lambda: 1)())"])


def test_contains():
    space = Space.parse(["x~uniform(0, 1)", "n~randint(1, 3)", "c~choices(['a', 'b'])"])
    assert space.contains({"x": 0.5, "n": 2, "c": "a"})
    assert not space.contains({"x": 1.5, "n": 2, "c": "a"})
    assert not space.contains({"x": 0.5, "n": 2.0, "c": "a"})
    assert not space.contains({"x": 0.5, "n": 2})
    assert math.isclose(space["x"].high, 1.0)
