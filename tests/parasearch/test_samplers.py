"""Every sampler: bounds, types, determinism, pending asks, failures, and a little quality."""

import math

import numpy as np
import pytest

from parasearch import SAMPLERS, SamplerError, SearchExhausted, Space, create_sampler

MIXED = Space.parse(
    [
        "lr~loguniform(1e-5, 1.0)",
        "momentum~uniform(0, 1)",
        "layers~uniform(1, 8, discrete=True)",
        "width~loguniform(16, 1024, discrete=True)",
        "noise~normal(0, 1)",
        "act~choices(['relu', 'tanh', 'gelu'])",
        "opt~choices({'adam': 0.8, 'sgd': 0.2})",
        "epochs~fidelity(1, 81, base=3)",
    ]
)
NUMERIC = Space.parse(
    [
        "lr~loguniform(1e-5, 1.0)",
        "momentum~uniform(0, 1)",
        "layers~uniform(1, 8, discrete=True)",
        "noise~normal(0, 1)",
    ]
)
# the multi-fidelity samplers need a fidelity dimension: tests/parasearch/test_asha.py
ALL = sorted(n for n in SAMPLERS if n not in ("asha", "hyperband"))


def _space_for(name):
    return NUMERIC if name == "cmaes" else MIXED


def _objective(p):
    """A mixed objective: smooth in the numbers, with a best choice for each category."""
    value = (math.log10(p["lr"]) + 3) ** 2 + (p["momentum"] - 0.9) ** 2 + 0.1 * p["noise"] ** 2
    value += 0.05 * abs(p["layers"] - 3)
    if "act" in p:
        value += {"relu": 0.5, "tanh": 0.0, "gelu": 0.2}[p["act"]] + 0.3 * (p["opt"] == "sgd")
        value += 0.1 * abs(math.log2(p["width"]) - 7)
    return value


def _drive(sampler, n, pending=1, fail_every=0):
    """Run ``n`` trials with ``pending`` always outstanding; return the params in ask order."""
    queue, asked, told = [], [], 0
    while told < n:
        while len(queue) < pending and len(asked) < n:
            trial = sampler.ask()
            queue.append(trial)
            asked.append(trial.params)
        trial = queue.pop(0)
        failed = fail_every and trial.id % fail_every == fail_every - 1
        sampler.tell(trial.id, None if failed else _objective(trial.params))
        told += 1
    return asked


@pytest.mark.parametrize("name", ALL)
def test_stays_in_bounds_and_respects_types(name):
    space = _space_for(name)
    sampler = create_sampler(name, space, seed=1)
    params = _drive(sampler, 24, pending=3)
    for p in params:
        assert space.contains(p), p
        assert isinstance(p["layers"], int) and 1 <= p["layers"] <= 8
        assert 1e-5 <= p["lr"] <= 1.0
        if space is MIXED:
            assert p["act"] in ("relu", "tanh", "gelu")
            assert p["opt"] in ("adam", "sgd")
            assert p["epochs"] == 81
            assert isinstance(p["width"], int) and 16 <= p["width"] <= 1024


def test_log_scale_and_choice_weights_are_respected_by_random():
    sampler = create_sampler("random", MIXED, seed=0)
    params = [sampler.ask().params for _ in range(2000)]
    lrs = np.log10([p["lr"] for p in params])
    # Uniform in log10 over [-5, 0]: each decade holds about a fifth of the draws.
    counts = np.histogram(lrs, bins=5, range=(-5, 0))[0]
    assert counts.min() > 300
    assert 0.75 < np.mean([p["opt"] == "adam" for p in params]) < 0.85
    assert abs(np.mean([p["noise"] for p in params])) < 0.1
    assert set(p["layers"] for p in params) == set(range(1, 9))


@pytest.mark.parametrize("name", ALL)
def test_same_seed_and_history_give_the_same_suggestions(name):
    space = _space_for(name)
    first = _drive(create_sampler(name, space, seed=7), 18, pending=2, fail_every=5)
    second = _drive(create_sampler(name, space, seed=7), 18, pending=2, fail_every=5)
    assert first == second
    other = _drive(create_sampler(name, space, seed=8), 18, pending=2, fail_every=5)
    assert other != first


@pytest.mark.parametrize("name", ALL)
def test_many_pending_asks(name):
    space = _space_for(name)
    sampler = create_sampler(name, space, seed=3)
    first, then = (16, 12) if name == "gp" else (40, 30)
    trials = [sampler.ask() for _ in range(first)]
    assert len({t.id for t in trials}) == first
    for trial in reversed(trials):
        sampler.tell(trial.id, _objective(trial.params))
    more = [sampler.ask() for _ in range(then)]
    if name not in ("random", "grid", "qmc"):
        # A model-based sampler does not repeat itself while everything is pending.
        distinct = {tuple(sorted(t.params.items(), key=str)) for t in more}
        assert len(distinct) > then * 2 // 3
    for trial in more:
        sampler.tell(trial.id, _objective(trial.params))


@pytest.mark.parametrize("name", ALL)
def test_failed_trials_do_not_break_the_sampler(name):
    space = _space_for(name)
    sampler = create_sampler(name, space, seed=2)
    params = _drive(sampler, 30, pending=2, fail_every=3)
    assert all(space.contains(p) for p in params)
    # Everything failing, including NaN reports, is survivable too.
    sampler = create_sampler(name, space, seed=2)
    for i in range(15):
        trial = sampler.ask()
        sampler.tell(trial.id, float("nan") if i % 2 else None)
    assert space.contains(sampler.ask().params)


def test_tell_errors_are_clear():
    sampler = create_sampler("random", MIXED)
    trial = sampler.ask()
    sampler.tell(trial.id, 1.0)
    with pytest.raises(SamplerError, match="already told"):
        sampler.tell(trial.id, 2.0)
    with pytest.raises(SamplerError, match="unknown trial id"):
        sampler.tell(99, 1.0)
    with pytest.raises(ValueError, match="unknown sampler"):
        create_sampler("annealing", MIXED)


def test_cmaes_rejects_categorical_dimensions_clearly():
    with pytest.raises(SamplerError, match="categorical: act, opt"):
        create_sampler("cmaes", MIXED)


def test_grid_exhausts_then_says_so():
    space = Space.parse(["x~uniform(0, 1)", "n~randint(1, 3)", "c~choices(['a', 'b'])"])
    sampler = create_sampler("grid", space, seed=0, resolution=4)
    seen = set()
    for _ in range(4 * 3 * 2):
        p = sampler.ask().params
        seen.add((round(p["x"], 6), p["n"], p["c"]))
    assert len(seen) == 24 and sampler.exhausted
    assert {x for x, _, _ in seen} == {0.125, 0.375, 0.625, 0.875}
    with pytest.raises(SearchExhausted, match="all 24 points"):
        sampler.ask()


def test_maximize_flips_the_objective():
    space = Space.parse(["x~uniform(-1, 1)", "y~uniform(-1, 1)"])
    sampler = create_sampler("tpe", space, seed=0, maximize=True)
    for _ in range(60):
        trial = sampler.ask()
        sampler.tell(trial.id, -(trial.params["x"] ** 2 + trial.params["y"] ** 2))
    assert sampler.best.value > -0.01


def test_one_dimensional_and_fidelity_only_spaces():
    for name in ALL:
        sampler = create_sampler(name, Space.parse(["x~uniform(0, 1)"]), seed=0)
        for _ in range(10):  # the default grid has 10 points
            trial = sampler.ask()
            assert 0 <= trial.params["x"] <= 1
            sampler.tell(trial.id, (trial.params["x"] - 0.3) ** 2)
    sampler = create_sampler("tpe", Space.parse(["epochs~fidelity(1, 27, base=3)"]))
    assert sampler.ask().params == {"epochs": 27}


# Quality on a small budget: each sampler must reach a level that random search, with the
# same budget, reaches rarely. Margins are generous; the benchmark measures quality.
QUALITY = {"tpe": (60, 0.1), "cmaes": (60, 0.1), "gp": (25, 0.1)}


def _sphere_loss(p):
    return (math.log10(p["lr"]) + 3) ** 2 + 4 * (p["momentum"] - 0.9) ** 2 + p["noise"] ** 2


@pytest.mark.parametrize("name", sorted(QUALITY))
def test_quality_beats_random_on_a_small_budget(name):
    budget, level = QUALITY[name]
    space = Space.parse(
        ["lr~loguniform(1e-6, 1.0)", "momentum~uniform(0, 1)", "noise~uniform(-3, 3)"]
    )

    def best_of(sampler_name, seed):
        sampler = create_sampler(sampler_name, space, seed=seed)
        best = math.inf
        for _ in range(budget):
            trial = sampler.ask()
            value = _sphere_loss(trial.params)
            sampler.tell(trial.id, value)
            best = min(best, value)
        return best

    ours = [best_of(name, seed) for seed in range(3)]
    randoms = [best_of("random", seed) for seed in range(3)]
    assert np.median(ours) < level, ours
    assert np.median(randoms) > level, randoms


def test_tpe_handles_categories_better_than_random():
    def best_of(name, seed):
        sampler = create_sampler(name, MIXED, seed=seed)
        best = math.inf
        for _ in range(80):
            trial = sampler.ask()
            value = _objective(trial.params)
            sampler.tell(trial.id, value)
            best = min(best, value)
        return best

    seeds = range(3)
    assert np.median([best_of("tpe", s) for s in seeds]) < np.median(
        [best_of("random", s) for s in seeds]
    )
