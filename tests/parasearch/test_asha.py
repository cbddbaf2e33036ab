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
