"""The exit-rule registry: names, unknown and duplicate names, the levels each rule reads, the common
contract of every registered rule, and the deferral budget."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import numpy as np
import pytest

from natix.calibrate.exits import (
    EXIT_RULES,
    EXITS,
    AnswerAll,
    Bound,
    BudgetThreshold,
    ExitLevels,
    ExitRule,
    create_exit,
    register_exit,
)
from natix.errors import ConfigError, DataError
from natix.jsonio import dumps


def test_registry_names_the_four_rules():
    assert EXITS == ("ltt", "crc", "scrc", "budget") == tuple(EXIT_RULES)
    assert all(EXIT_RULES[name].name == name for name in EXITS)
    with pytest.raises(TypeError):
        EXIT_RULES["mine"] = AnswerAll  # read-only: register with @register_exit


def test_unknown_exit_is_one_line_listing_the_valid_ones():
    with pytest.raises(ConfigError, match=r"^unknown exit rule 'maybe': pass one of budget, crc, ltt, scrc$"):
        create_exit("maybe", ExitLevels())


def test_duplicate_registration_raises_and_keeps_the_first():
    @dataclass
    class Other(ExitRule):
        alpha: float

    with pytest.raises(ConfigError, match="exit rule 'ltt' is already registered"):
        register_exit("ltt")(Other)
    assert EXIT_RULES["ltt"] is not Other and EXIT_RULES["ltt"].name == "ltt"


def test_no_exit_answers_everything():
    rule = create_exit(None, ExitLevels())
    assert isinstance(rule, AnswerAll) and rule.bound is None and rule.state() == {}
    assert rule.fit(np.array([]), np.array([]), np.array([])).accept(np.ones(3)).all()


@pytest.mark.parametrize("name, levels", [("ltt", {"alpha", "delta"}), ("crc", {"alpha"}),
                                          ("scrc", {"alpha", "delta", "acceptance"}), ("budget", {"budget"})])
def test_each_rule_takes_the_levels_it_uses(name, levels):
    rule = create_exit(name, ExitLevels(alpha=0.2, delta=0.3, acceptance=0.7, budget=0.4))
    assert {f.name for f in fields(rule)} == levels
    assert {f.name: getattr(rule, f.name) for f in fields(rule)} == {
        k: v for k, v in {"alpha": 0.2, "delta": 0.3, "acceptance": 0.7, "budget": 0.4}.items() if k in levels}


@pytest.mark.parametrize("kwargs, match", [({"budget": 0.0}, "budget must be in \\(0, 1\\)"),
                                           ({"alpha": 1.0}, "alpha must be in \\(0, 1\\)"),
                                           ({"acceptance": "most"}, "acceptance must be a number")])
def test_levels_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ExitLevels(**kwargs)


def _fold(n=600, seed=0):
    """Calibrated probabilities, labels and max(q, 1 - q) of a fold B."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    q = 1 / (1 + np.exp(-(rng.normal(size=n) * 1.5 + 2.0 * (2 * y - 1))))
    return q, y, np.maximum(q, 1 - q)


@pytest.mark.parametrize("name", EXITS)
def test_every_rule_fits_states_accepts_and_says_what_it_guarantees(name):
    q, y, conf = _fold()
    levels = ExitLevels(alpha=0.2, delta=0.2)
    rule = create_exit(name, levels)
    assert rule.fit(q, y, conf) is rule
    state = json.loads(dumps(rule.state()))
    assert isinstance(state["certified"], bool) and name in state
    q_new, y_new, conf_new = _fold(seed=1)
    served = rule.serve(q_new)
    accept = rule.accept(np.maximum(served, 1 - served))
    assert accept.shape == (len(q_new),) and accept.dtype == bool
    assert isinstance(rule.guarantee, str) and rule.guarantee
    if rule.bound is None:
        assert state["certified"] is False and "no guarantee" in rule.guarantee
    else:
        assert isinstance(rule.bound, Bound) and rule.bound.level == levels.alpha
        assert 0 <= rule.observed(y_new, served, accept, np.maximum(served, 1 - served)) <= 1
    if rule.threshold is not None:
        np.testing.assert_array_equal(accept, np.maximum(served, 1 - served) >= rule.threshold)
    if rule.step is not None:  # a rule that moves decisions replays them from its thresholds.json entries
        np.testing.assert_array_equal(type(rule).served_map(state)(q_new), served)
    else:
        np.testing.assert_array_equal(served, q_new)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 100, 333])
@pytest.mark.parametrize("budget", [0.05, 0.2, 0.29, 0.5, 0.7, 0.99])
def test_budget_defers_at_most_its_fraction_of_the_calibration_images(n, budget):
    rng = np.random.default_rng(n)
    for g in (rng.random(n), np.round(rng.random(n), 1)):  # distinct, then heavily tied
        est = BudgetThreshold(budget=budget).fit(g)
        deferred = int((~est.accept(g)).sum())
        assert deferred <= budget * n + 1e-9 and est.deferred_fraction_ == deferred / n  # 0.29 * 100 < 29 in floats
        if len(np.unique(g)) == n:  # without ties it defers exactly floor(budget * n)
            assert deferred == int(np.floor(budget * n + 1e-9))


def test_budget_rejects_bad_input():
    with pytest.raises(ConfigError, match="budget must be in"):
        BudgetThreshold(budget=1.0).fit(np.ones(3))
    with pytest.raises(DataError, match="NaN or inf"):
        BudgetThreshold().fit([0.6, np.nan])
    est = BudgetThreshold().fit(np.linspace(0.5, 1, 11))
    with pytest.raises(DataError, match="1-D"):
        est.accept(np.ones((2, 2)))
