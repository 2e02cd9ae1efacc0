"""Every calibration estimator's fitted state: to_state → strict JSON → from_state gives the same map, bitwise;
damaged states are one-line errors; the exit-rule estimators write strict JSON (NaN → null, inf → "inf")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from natix.calibrate.calibrators import (
    BetaCalibration,
    DecisionThreshold,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)
from natix.calibrate.conformal import ConformalRiskControl, LearnThenTest
from natix.calibrate.exits import BudgetThreshold
from natix.calibrate.scrc import SCRC, max_probability
from natix.calibrate.state import StateError
from natix.errors import DataError
from natix.jsonio import dumps

REBUILDABLE = {
    "temperature": lambda: TemperatureScaling(max_iter=200),
    "platt": PlattScaling,
    "beta": lambda: BetaCalibration(reg=0.01),
    "isotonic": IsotonicCalibration,
    "isotonic-eps": lambda: IsotonicCalibration(eps=1e-3),
    "threshold-mcc": DecisionThreshold,
    "threshold-fnr": lambda: DecisionThreshold(objective="fnr", target_fnr=0.1),
}


@pytest.fixture
def data():
    """Miscalibrated scores with the edge values 0, 0.5 and 1, and unseen test points."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 1500)
    y = (rng.random(1500) < 1 / (1 + np.exp(-(z / 2 + 0.4)))).astype(np.int64)
    p = 1 / (1 + np.exp(-z))
    p[:4] = [0.0, 1.0, 0.5, 0.5]
    test = np.concatenate([rng.random(3000), p, [0.0, 0.5, 1.0, np.nextafter(0.5, 1)]])
    return p, y, test


def _round_trip(state: dict) -> dict:
    """Through the strict JSON text a run's files hold."""
    return json.loads(dumps(state), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


@pytest.mark.parametrize("name", list(REBUILDABLE))
def test_state_round_trip_gives_the_same_map_bitwise(name, data):
    p, y, test = data
    est = REBUILDABLE[name]().fit(p, y)
    state = est.to_state()
    assert state and all(k.endswith("_") or k == "eps" for k in state)
    twin = type(est).from_state(_round_trip(state))
    assert type(twin) is type(est) and twin is not est
    np.testing.assert_array_equal(twin.transform(test), est.transform(test))
    np.testing.assert_array_equal(twin.predict(test), est.predict(test))
    assert twin.to_state() == state


def test_isotonic_state_keeps_the_table_and_eps(data):
    p, y, _ = data
    state = IsotonicCalibration(eps=1e-3).fit(p, y).to_state()
    assert set(state) == {"isotonic_", "eps"} and set(state["isotonic_"]) == {"x", "y"}
    assert state["eps"] == 1e-3 and np.all(np.diff(state["isotonic_"]["x"]) > 0)
    assert IsotonicCalibration.from_state(state).eps == 1e-3


def test_unfitted_estimators_have_no_state():
    for est in (PlattScaling(), IsotonicCalibration(), DecisionThreshold(), LearnThenTest(), SCRC(),
                BudgetThreshold()):
        with pytest.raises(NotFittedError):
            est.to_state()


@pytest.mark.parametrize("cls, state, match", [
    (PlattScaling, {"coef_": 1.0}, "PlattScaling state lacks 'intercept_'"),
    (BetaCalibration, [1.0, 1.0, 0.0], "BetaCalibration state must be a JSON object, got list"),
    (TemperatureScaling, {"temperature_": "hot"}, "'temperature_' is 'hot', not a finite number"),
    (TemperatureScaling, {"temperature_": None}, "'temperature_' is None, not a finite number"),
    (PlattScaling, {"coef_": "inf", "intercept_": 0.0}, "'coef_' is 'inf', not a finite number"),
    (DecisionThreshold, {}, "DecisionThreshold state lacks 'threshold_'"),
    (IsotonicCalibration, {"x": [0, 1], "y": [0, 1]}, "lacks the 'isotonic_' table"),
    (IsotonicCalibration, {"isotonic_": {"x": [0.2, 0.1], "y": [0, 1]}}, "not an increasing"),
    (IsotonicCalibration, {"isotonic_": {"x": [0.1, 0.2], "y": [0]}}, "not an increasing"),
    (IsotonicCalibration, {"isotonic_": {"x": [], "y": []}}, "'x' must be a non-empty list"),
    (IsotonicCalibration, {"isotonic_": {"x": [0.1], "y": [0.5]}, "eps": 0.7}, "'eps' is 0.7, outside"),
])
def test_damaged_states_are_one_line_errors(cls, state, match):
    with pytest.raises(StateError, match=match) as info:
        cls.from_state(state)
    assert isinstance(info.value, DataError) and "\n" not in str(info.value)
    assert str(info.value).endswith("pass what to_state() returned")


def test_exit_estimators_write_strict_json():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.6 + rng.random(400) * 0.4, 0, 1)
    conf = max_probability(p)
    errors = ((p > 0.5) != y).astype(int)
    # alpha this small certifies nothing: threshold inf, untested candidates have NaN p-values.
    ltt = _round_trip(LearnThenTest(alpha=0.001, delta=0.1).fit(conf, errors).to_state())
    assert ltt["threshold_"] == "inf" and ltt["certified_"] is False and None in ltt["p_values_"]
    assert len(ltt["thresholds_"]) == len(ltt["n_accepted_"]) == len(ltt["certified_mask_"])
    crc = _round_trip(ConformalRiskControl(alpha=0.2).fit(p, y).to_state())
    assert set(crc) == {"threshold_", "lambda_", "empirical_risk_", "n_calibration_"}
    scrc = _round_trip(SCRC(alpha=0.2).fit(p, y).to_state())
    assert "test_selection_rate_" not in scrc and scrc["guarantee_"].startswith("SCRC-I")
    scrc_t = SCRC(alpha=0.2, mode="transductive").fit(p, y, test_confidence=conf[:50]).to_state()
    assert 0 <= scrc_t["test_acceptance_rate_"] <= scrc_t["test_selection_rate_"] <= 1
    budget = _round_trip(BudgetThreshold(budget=0.25).fit(conf).to_state())
    assert budget["n_calibration_"] == 400 and budget["deferred_fraction_"] <= 0.25
