"""ASHA and Hyperband: rungs, promotions without waiting, brackets, replay."""

from __future__ import annotations

import pytest

from parasearch import create_sampler
from parasearch.samplers.base import SamplerError
from parasearch.space import Space

SPACE = Space.parse(["x~uniform(0, 1)", "c~choices(['a', 'b'])", "epochs~fidelity(1, 27, 3)"])


def others(params):
    return {k: v for k, v in params.items() if k != "epochs"}


def test_rungs_and_no_barrier():
    sampler = create_sampler("asha", SPACE, seed=3)
    assert sampler.rungs == [1.0, 3.0, 9.0, 27.0]
    asked = [sampler.ask() for _ in range(10)]  # nothing told yet: still new configurations
    assert [t.params["epochs"] for t in asked] == [1] * 10
    assert len({str(others(t.params)) for t in asked}) == 10


def test_the_top_third_of_a_rung_is_promoted_with_the_same_parameters():
    sampler = create_sampler("asha", SPACE, seed=1)
    trials = [sampler.ask() for _ in range(6)]
    for i, trial in enumerate(trials):
        sampler.tell(trial.id, float(i))  # trial 0 best, then 1
    promoted = [sampler.ask(), sampler.ask()]
    assert [t.params["epochs"] for t in promoted] == [3, 3]
    assert [others(t.params) for t in promoted] == [others(trials[0].params),
                                                     others(trials[1].params)]
    assert sampler.ask().params["epochs"] == 1  # no more promotable: a new configuration
    sampler.tell(promoted[0].id, 0.5)
    sampler.tell(promoted[1].id, 0.7)
    sampler.tell(sampler.records[-1].id, 9.0)
    # rung 1 has 2 results: floor(2/3) = 0 promotable; rung 0 has 7: 2 promoted already
    assert sampler.ask().params["epochs"] == 1


def test_maximize_promotes_the_largest():
    sampler = create_sampler("asha", SPACE, seed=1, maximize=True)
    trials = [sampler.ask() for _ in range(3)]
    for i, trial in enumerate(trials):
        sampler.tell(trial.id, float(i))
    assert others(sampler.ask().params) == others(trials[2].params)


def test_hyperband_shares_new_configurations_by_budget():
    sampler = create_sampler("hyperband", SPACE, seed=2)
    firsts = [sampler.ask().params["epochs"] for _ in range(41)]
    # Hyperband's shares for 4 rungs and eta 3: 27, 12, 6 and 4 configurations per round
    # for the brackets starting at 1, 3, 9 and 27 epochs (about the same budget each)
    assert {e: firsts.count(e) for e in (1, 3, 9, 27)} == {1: 22, 3: 10, 9: 5, 27: 4}
    assert firsts[:4] == [1, 3, 9, 27]  # every bracket opens at once


def test_replaying_the_history_gives_the_same_next_ask():
    first = create_sampler("hyperband", SPACE, seed=5)
    history = []
    for step in range(30):
        trial = first.ask()
        history.append(trial)
        if step % 3 == 2:
            for t in history[-3:]:
                first.tell(t.id, t.params["x"] / t.params["epochs"])
    again = create_sampler("hyperband", SPACE, seed=5)
    for trial in history:
        again.adopt(trial.params)
    for trial in history:
        if first.records[trial.id].state == "complete":
            again.tell(trial.id, first.records[trial.id].value)
    assert again.ask().params == first.ask().params


def test_asha_needs_one_fidelity():
    with pytest.raises(SamplerError, match="fidelity"):
        create_sampler("asha", Space.parse(["x~uniform(0, 1)"]))


def test_hyperband_ranks_a_rung_over_every_bracket():
    """Three results at 3 epochs — two configurations that started there, one promoted from
    1 epoch — make one promotion to 9 epochs: the best of the three, whatever its bracket."""
    sampler = create_sampler("hyperband", SPACE, seed=4)
    configs = [{"x": x, "c": "a"} for x in (0.1, 0.2, 0.3)]
    values = {0.1: 5.0, 0.2: 2.0, 0.3: 7.0}
    low = sampler.adopt({**configs[0], "epochs": 1})  # bracket 0: started at 1 epoch
    sampler.tell(low.id, 1.0)
    for config in configs:  # x=0.1 promoted to 3 epochs; x=0.2 and 0.3 start there
        trial = sampler.adopt({**config, "epochs": 3})
        sampler.tell(trial.id, values[config["x"]])
    promoted = sampler.ask()
    assert promoted.params == {"x": 0.2, "c": "a", "epochs": 9}


TWO_RUNGS = Space.parse(["x~uniform(0, 1)", "c~choices(['a', 'b'])", "epochs~fidelity(1, 3, 3)"])


def _near(trials, centre):
    return sum(abs(t.params["x"] - centre) < 0.1 for t in trials) / len(trials)


def _adopt(sampler, x, epochs, value=None):
    trial = sampler.adopt({"x": x, "c": "a", "epochs": epochs})
    if value is not None:
        sampler.tell(trial.id, value)
    return trial


@pytest.mark.parametrize("algo", ["asha", "hyperband"])
def test_new_configurations_come_from_a_model_of_the_results(algo):
    """30 results at 1 epoch, best near x = 0.2, their top third running at 3 epochs (nothing
    to promote): most new configurations go near 0.2; with model=False they are uniform."""
    near = {}
    for model in (True, False):
        sampler = create_sampler(algo, TWO_RUNGS, seed=7, model=model)
        xs = [(i + 0.5) / 30 for i in range(30)]
        for x in xs:
            _adopt(sampler, x, 1, (x - 0.2) ** 2)
        for x in sorted(xs, key=lambda x: abs(x - 0.2))[:10]:
            _adopt(sampler, x, 3)
        near[model] = _near([sampler.ask() for _ in range(30)], 0.2)
    assert near[True] >= 0.5 and near[False] <= 0.35


def test_the_model_follows_the_highest_rung_with_enough_results():
    """1 epoch says x = 0.2 is best, 3 epochs (full fidelity, 12 results) says 0.8: new
    configurations follow the full-fidelity ranking."""
    sampler = create_sampler("hyperband", TWO_RUNGS, seed=3)
    low = [(i + 0.5) / 12 for i in range(12)]
    for x in low:
        _adopt(sampler, x, 1, (x - 0.2) ** 2)
    promoted = sorted(low, key=lambda x: abs(x - 0.2))[:4]
    for x in promoted + [(i + 0.25) / 8 for i in range(8)]:
        _adopt(sampler, x, 3, (x - 0.8) ** 2)
    asked = [sampler.ask() for _ in range(20)]
    assert sum(t.params["x"] > 0.5 for t in asked) >= 14  # uniform: 10; from 1 epoch: fewer


def test_parallel_asks_from_the_model_spread_out():
    """New configurations still running count against their region: 20 asks in a row, none
    told, are 20 different configurations."""
    sampler = create_sampler("asha", TWO_RUNGS, seed=1)
    for i in range(12):
        _adopt(sampler, (i + 0.5) / 12, 1, float(i))
    for i in range(4):
        _adopt(sampler, (i + 0.5) / 12, 3)
    asked = [sampler.ask() for _ in range(20)]
    assert all(t.params["epochs"] == 1 for t in asked)
    assert len({t.params["x"] for t in asked}) == 20


def test_replay_with_results_and_pending_trials_gives_the_same_next_ask():
    """The model is fitted on the history only: a sampler rebuilt from the records (results
    and pending trials) asks what the original would."""
    first = create_sampler("asha", SPACE, seed=11)
    for step in range(60):
        trial = first.ask()
        if step % 4 != 3:  # every fourth left pending
            first.tell(trial.id, trial.params["x"] + 1 / trial.params["epochs"])
    again = create_sampler("asha", SPACE, seed=11)
    for record in first.records:
        again.adopt(record.params)
    for record in first.records:
        if record.state == "complete":
            again.tell(record.id, record.value)
    assert [again.ask().params for _ in range(5)] == [first.ask().params for _ in range(5)]
