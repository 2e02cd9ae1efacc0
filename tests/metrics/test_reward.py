"""Tests for natix.metrics.reward: hand-derived validator sequences, two independent ports of the
validator's tracker (plain Python, and scikit-learn as the validator calls it), the expected
reward over random streams, and the invalid-answers-as-mistakes variant."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from natix import metrics as M

# --------------------------------------------------------------------------------------------
# two ports of the validator's per-miner tracker, written from its rules
# --------------------------------------------------------------------------------------------


def _hand_mcc(labels, decisions):
    tp = sum(1 for y, d in zip(labels, decisions) if y == 1 and d == 1)
    tn = sum(1 for y, d in zip(labels, decisions) if y == 0 and d == 0)
    fp = sum(1 for y, d in zip(labels, decisions) if y == 0 and d == 1)
    fn = sum(1 for y, d in zip(labels, decisions) if y == 1 and d == 0)
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def _naive_metrics(window):
    """(accuracy, max(0, MCC)) of a window of (answer, label) pairs, in plain Python."""
    kept = [(a, y) for a, y in window if a != -1]  # -1 answers are dropped (NaN != -1 is kept)
    if not kept:
        return 0.0, 0.0
    if not all(math.isfinite(a) for a, _ in kept):
        return 0.0, 0.0  # sklearn raises on NaN / inf and the tracker returns zeros
    decisions = [round(a) for a, _ in kept]  # Python rounds half to even, as np.round
    labels = [y for _, y in kept]
    if any(abs(d) >= 2**63 for d in decisions):
        return 0.0, 0.0  # not castable to int64: sklearn reads a continuous target and raises
    values = set(labels) | set(decisions)
    if not values <= {0, 1} and (len(values) > 2 or 1 not in values):
        return 0.0, 0.0  # multiclass target, or pos_label=1 absent: sklearn raises
    accuracy = sum(d == y for d, y in zip(decisions, labels)) / len(labels)
    if len(set(labels)) < 2 or len(set(decisions)) < 2:
        return accuracy, 0.0
    return accuracy, max(0.0, _hand_mcc(labels, decisions))


def _sklearn_metrics(window):
    """The same pair with the scikit-learn calls of the validator's tracker; any error → zeros."""
    kept = [(a, y) for a, y in window if a != -1]
    if not kept:
        return 0.0, 0.0
    probs = np.array([a for a, _ in kept])
    labels = np.array([float(y) for _, y in kept])
    decisions = np.round(probs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accuracy = skm.accuracy_score(labels, decisions)
            for score in (skm.precision_score, skm.recall_score, skm.f1_score):
                score(labels, decisions, zero_division=0)
            two = len(np.unique(labels)) > 1
            mcc = max(0, skm.matthews_corrcoef(labels, decisions)) if two and len(np.unique(decisions)) > 1 else 0.0
            if two:
                skm.roc_auc_score(labels, probs)
    except ValueError:
        return 0.0, 0.0
    return accuracy, mcc


def _port_rewards(labels, answers, metrics=_naive_metrics, mcc_window=100, acc_window=10):
    """Per-answer rewards: append to the history, then score the windows that include it."""
    history, out = [], []
    for y, a in zip(labels, answers):
        history = (history + [(float(a), int(y))])[-max(mcc_window, acc_window):]
        _, mcc = metrics(history[-mcc_window:])
        accuracy, _ = metrics(history[-acc_window:])
        if a == -1:
            out.append(0.0)
        else:
            out.append(0.0 if (a < 0 or a > 1) else (0.5 * mcc + 0.5 * accuracy) ** 3)
    return np.array(out)


SPECIAL = [-1.0, 0.5, 1.5, 2.0, 2.4, 2.5, -0.7, -0.3, -0.5, 1.2, 1.49, np.nan, np.inf, -np.inf, 1e20, 3.0]


def _mixed_sequence(rng, n, invalid_rate, positive_rate=0.5):
    """Labels and answers: mostly sensible probabilities, some special answers, all-positive stretches."""
    y = (rng.random(n) < positive_rate).astype(int)
    p = np.where(y == 1, rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.7, n))
    special = rng.random(n) < invalid_rate
    p[special] = rng.choice(SPECIAL, special.sum())
    return y, p


# --------------------------------------------------------------------------------------------
# validator_rewards: hand cases
# --------------------------------------------------------------------------------------------


def test_two_early_errors_then_ten_correct_give_0_729():
    y = np.array([0, 1] * 10)
    p = np.where(y == 1, 0.9, 0.1)
    p[0], p[1] = 0.9, 0.1  # one false positive, one false negative, both outside the last 10
    # step 20: tp = 9, tn = 9, fp = 1, fn = 1 -> MCC = (81 - 1) / sqrt(10 * 10 * 10 * 10) = 0.8;
    # last 10 all correct -> accuracy 1; reward = (0.5 * 0.8 + 0.5 * 1) ** 3 = 0.9 ** 3 = 0.729
    rewards = M.validator_rewards(p, y)
    assert rewards[19] == pytest.approx(0.729)
    # step 11: the false negative (step 2) is still in the last 10 -> accuracy 0.9;
    # MCC over 11: tp = 4, tn = 5, fp = 1, fn = 1 -> (20 - 1) / sqrt(5 * 5 * 6 * 6) = 19 / 30
    assert rewards[10] == pytest.approx((0.5 * 19 / 30 + 0.5 * 0.9) ** 3)
    assert rewards[0] == 0.0  # one wrong answer: accuracy 0, MCC 0 (one label)
    np.testing.assert_array_equal(rewards, M.ordered_rewards(y, p)[0])


def test_a_no_answer_scores_zero_and_keeps_its_slot_but_leaves_both_metrics():
    y = np.array([0, 1] * 6)
    p = np.where(y == 1, 0.8, 0.2)
    p[1] = 0.2  # a false negative at step 2
    p[10] = -1.0  # no answer at step 11 (label 0)
    rewards = M.validator_rewards(p, y)
    assert rewards[10] == 0.0
    # step 12: the last 10 slots are steps 3..12; step 11 is -1, so 9 answers, all correct:
    # accuracy 1 (had the -1 left the history, step 2's mistake would be back in: 0.9).
    # MCC over steps 1..12 without step 11: tp = 5, tn = 5, fp = 0, fn = 1
    # -> 25 / sqrt(5 * 6 * 5 * 6) = 5/6; reward = (5/12 + 1/2) ** 3 = (11/12) ** 3
    assert rewards[11] == pytest.approx((11 / 12) ** 3)
    # ordered_rewards counts the -1 as a wrong decision (fp) instead: accuracy 0.9 over steps 3..12,
    # MCC over 12: tp = 5, tn = 5, fp = 1, fn = 1 -> 24 / 36
    assert M.ordered_rewards(y, p)[0][11] == pytest.approx((0.5 * 24 / 36 + 0.5 * 0.9) ** 3)


def test_no_answers_alone_and_empty_windows_score_zero():
    np.testing.assert_array_equal(M.validator_rewards([-1, -1, -1], [0, 1, 1]), [0.0, 0.0, 0.0])
    # after 10 no-answers, the first answer's windows hold only itself: accuracy 1, MCC 0 (one label)
    rewards = M.validator_rewards([-1] * 10 + [0.2], [0] * 11)
    assert rewards[10] == pytest.approx(0.5**3)


def test_half_decides_no_roadwork():
    y = np.array([0, 1] * 10)
    # 0.5 rounds to 0 (half to even), the right answer for label 0
    assert M.validator_rewards(np.where(y == 1, 0.9, 0.5), y)[-1] == pytest.approx(1.0)
    # all 0.5 -> all class 0: accuracy 0.5, one decided class -> MCC 0: (0.25) ** 3
    assert M.validator_rewards(np.full(20, 0.5), y)[-1] == pytest.approx(0.25**3)


@pytest.mark.parametrize("bad", [1.5, 2.0, 2.5, -0.7, -2.0, np.nan, np.inf, -np.inf, 1e20])
def test_an_answer_rounding_outside_0_1_zeroes_10_rewards_and_100_mcc_terms(bad):
    y = np.array([0, 1] * 63)
    p = np.where(y == 1, 0.9, 0.1)
    p[20] = bad  # np.round(bad) is 2, -1, -2, NaN, +-inf or 1e20: sklearn raises on its windows
    rewards = M.validator_rewards(p, y)
    assert rewards[0] == pytest.approx(0.125)  # one label so far: MCC 0, accuracy 1
    np.testing.assert_allclose(rewards[1:20], 1.0)
    # steps 21..30: the bad answer is in the last 10 (and the last 100): both metrics 0
    np.testing.assert_array_equal(rewards[20:30], 0.0)
    # steps 31..120: only in the last 100: MCC term 0, accuracy 1 -> 0.5 ** 3
    np.testing.assert_allclose(rewards[30:120], 0.125)
    np.testing.assert_allclose(rewards[120:], 1.0)  # step 121 on: out of the history


@pytest.mark.parametrize("index, answer", [(20, -0.3), (20, -0.5), (21, 1.2), (21, 1.49)])
def test_an_answer_outside_0_1_that_rounds_to_0_or_1_scores_zero_alone(index, answer):
    y = np.array([0, 1] * 63)  # step 21 is label 0, step 22 label 1
    p = np.where(y == 1, 0.9, 0.1)
    p[index] = answer  # np.round gives the right class: -0.3, -0.5 -> -0.0; 1.2, 1.49 -> 1.0
    rewards = M.validator_rewards(p, y)
    assert rewards[index] == 0.0  # outside [0, 1]: its own reward is 0
    expected = np.ones(len(y))
    expected[0], expected[index] = 0.125, 0.0  # the windows count it as a right decision
    np.testing.assert_allclose(rewards, expected)


def test_one_class_windows_have_mcc_zero():
    # one label: every answer right, MCC 0 -> (0.5 * 0 + 0.5 * 1) ** 3
    np.testing.assert_allclose(M.validator_rewards(np.full(30, 0.9), np.ones(30, int)), 0.125)
    # one decided class: labels alternate, all answers 0.9 -> accuracy 0.5 over the last 10, MCC 0
    assert M.validator_rewards(np.full(20, 0.9), [0, 1] * 10)[-1] == pytest.approx(0.25**3)


def test_all_positive_windows_count_a_single_bad_value_as_a_mistake():
    y = np.ones(18, int)
    p = np.full(18, 0.9)
    p[5], p[7] = 2.0, 3.0
    rewards = M.validator_rewards(p, y)
    # step 7: labels {1}, decisions {1, 2}: sklearn sees a binary target with pos_label 1 present
    # and raises nothing; accuracy 6/7 (the 2.0 is wrong), MCC 0 (one label)
    assert rewards[6] == pytest.approx((0.5 * 6 / 7) ** 3)
    assert rewards[5] == rewards[7] == 0.0  # their own rewards: outside [0, 1]
    # steps 9..15: decisions {1, 2, 3} in the last 10: a multiclass target, sklearn raises
    np.testing.assert_array_equal(rewards[8:15], 0.0)
    # step 16: the last 10 (steps 7..16) hold only the 3.0 -> accuracy 9/10
    assert rewards[15] == pytest.approx((0.5 * 0.9) ** 3)
    assert rewards[17] == pytest.approx(0.125)  # steps 9..18: all right
    # the same bad value among labels 0 makes sklearn raise (pos_label 1 absent)
    assert M.validator_rewards([0.1, 2.0, 0.1], [0, 0, 0])[2] == 0.0


# --------------------------------------------------------------------------------------------
# validator_rewards: agreement with ordered_rewards and with the two ports
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mcc_window, acc_window", [(100, 10), (7, 3), (1, 1), (40, 60)])
def test_valid_answers_give_the_ordered_rewards_exactly(rng, mcc_window, acc_window):
    for n in (1, 9, 250):
        y = rng.integers(0, 2, n)
        p = rng.random(n)
        p[rng.random(n) < 0.1] = 0.5
        kw = dict(mcc_window=mcc_window, acc_window=acc_window)
        np.testing.assert_array_equal(M.validator_rewards(p, y, **kw), M.ordered_rewards(y, p, **kw)[0])


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_a_plain_python_port(seed):
    rng = np.random.default_rng(seed)
    y, p = _mixed_sequence(rng, 240, invalid_rate=[0.03, 0.15, 0.4][seed % 3], positive_rate=[0.5, 0.9][seed % 2])
    y[60:90] = 1  # a stretch of positives, where a single bad value does not raise
    np.testing.assert_allclose(M.validator_rewards(p, y), _port_rewards(y, p), rtol=0, atol=1e-12)
    kw = dict(mcc_window=12, acc_window=4)
    np.testing.assert_allclose(M.validator_rewards(p, y, **kw), _port_rewards(y, p, **kw), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_agrees_with_the_validator_sklearn_calls(seed):
    rng = np.random.default_rng(100 + seed)
    y, p = _mixed_sequence(rng, 130, invalid_rate=0.15, positive_rate=0.8)
    y[30:55] = 1
    expected = _port_rewards(y, p, metrics=_sklearn_metrics)
    np.testing.assert_allclose(M.validator_rewards(p, y), expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# ordered_rewards: invalid answers as mistakes (the reward_ordered metric)
# --------------------------------------------------------------------------------------------


def test_ordered_reward_all_correct_and_all_wrong():
    y = np.array([0, 1] * 30)
    assert M.ordered_rewards(y, np.where(y == 1, 0.9, 0.1))[0][-1] == pytest.approx(1.0)
    assert M.ordered_rewards(y, np.where(y == 1, 0.1, 0.9))[0][-1] == 0.0


def test_ordered_reward_half_is_no_roadwork():
    y = np.array([0, 1] * 10)
    assert M.ordered_rewards(y, np.where(y == 1, 0.9, 0.5))[0][-1] == pytest.approx(1.0)
    # everything 0.5 -> all "no roadwork": accuracy .5, MCC undefined -> 0
    assert M.ordered_rewards(y, np.full(20, 0.5))[0][-1] == pytest.approx(0.25**3)


@pytest.mark.parametrize("bad", [-1.0, 1.2, np.nan])
def test_ordered_reward_invalid_answers_count_as_wrong(bad):
    y = np.array([0, 1] * 10)
    p = np.where(y == 1, 0.9, 0.1)
    p[18] = -1.0  # label 0
    p[19] = bad  # label 1; np.round(1.2) would have been right
    # tp=9 tn=9 fp=1 fn=1 -> MCC = 80/100; last 10: 8 correct
    assert M.ordered_rewards(y, p)[0][-1] == pytest.approx((0.5 * 0.8 + 0.5 * 0.8) ** 3)


def test_ordered_reward_mixed_hand_case():
    y = np.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    p = np.where(y == 1, 0.7, 0.3)
    p[:2] = 0.2  # the two oldest answers are wrong (fn = 2)
    # last 10 all correct; MCC over all 12: tp=4 tn=6 fp=0 fn=2 -> 24 / sqrt(4*6*6*8)
    expected_mcc = 24 / np.sqrt(4 * 6 * 6 * 8)
    rewards, mean = M.ordered_rewards(y, p)
    assert rewards[-1] == pytest.approx((0.5 * expected_mcc + 0.5) ** 3)
    assert rewards.shape == (12,)
    assert rewards[0] == 0.0  # one wrong answer: accuracy 0, MCC 0
    assert mean == pytest.approx(rewards.mean())


def test_ordered_reward_uses_only_the_last_windows():
    y = np.array([0, 1] * 75)
    p = np.where(y == 1, 0.9, 0.1)
    p[:50] = 1 - p[:50]  # the first 50 answers are wrong, outside the last 100
    rewards, _ = M.ordered_rewards(y, p)
    assert rewards[-1] == pytest.approx(1.0)
    assert rewards[99] < 1.0  # at step 100 the wrong answers are still in the MCC window
    # a single wrong answer 11 steps back leaves accuracy at 1, 10 steps back does not
    q = np.where(y == 1, 0.9, 0.1)
    q[-11] = 1 - q[-11]
    r = M.ordered_rewards(y, q)[0][-1]
    assert r < 1.0 and r > (0.5 * 0.9 + 0.5 * 0.9) ** 3
    q[-10] = 1 - q[-10]
    assert M.ordered_rewards(y, q)[0][-1] < r


def test_ordered_rewards_matches_a_naive_loop(rng):
    y = rng.integers(0, 2, 130)
    p = rng.random(130)
    p[rng.random(130) < 0.05] = -1.0
    rewards, _ = M.ordered_rewards(y, p)
    for t in (1, 7, 10, 11, 99, 100, 101, 130):
        yy, pp = y[max(0, t - 100) : t], p[max(0, t - 100) : t]
        dec = np.where((pp >= 0) & (pp <= 1), np.round(pp), 1 - yy)
        m = skm.matthews_corrcoef(yy, dec) if len(np.unique(yy)) > 1 else 0.0
        acc = np.mean(dec[-10:] == yy[-10:])
        assert rewards[t - 1] == pytest.approx((0.5 * max(0.0, m) + 0.5 * acc) ** 3)


# --------------------------------------------------------------------------------------------
# expected_reward
# --------------------------------------------------------------------------------------------


def _model(rng, n):
    y = np.array([0, 1] * (n // 2))
    return y, np.clip(np.where(y == 1, 0.65, 0.35) + rng.normal(0, 0.25, n), 0, 1)


def test_expected_reward_is_deterministic_for_a_seed_and_brackets_its_mean(rng):
    y, p = _model(rng, 300)
    a, b = M.expected_reward(y, p, seed=4), M.expected_reward(y, p, seed=4)
    assert a == b
    assert M.expected_reward(y, p, seed=5).mean != a.mean
    assert 0.0 < a.lo <= a.mean <= a.hi < 1.0
    assert a.length == 300 and a.streams >= 200
    narrow = M.expected_reward(y, p, seed=4, level=0.5)
    assert a.lo <= narrow.lo <= narrow.hi <= a.hi


def test_expected_reward_of_a_perfect_model_is_one():
    y = np.array([0, 1] * 100)
    # after the 100 warm-up answers the windows are full; a window of 100 draws holding one label
    # (MCC 0) has probability 2 ** -99: every scored reward is (0.5 + 0.5) ** 3 = 1
    est = M.expected_reward(y, y.astype(float))
    assert (est.mean, est.lo, est.hi) == (1.0, 1.0, 1.0)


def test_expected_reward_of_a_constant_answer():
    y = np.array([0, 1] * 100)
    # every answer 0.5 decides class 0: one decided class, MCC 0. Accuracy over the last 10 is
    # K/10 with K ~ Binomial(10, 1/2) label-0 draws, so E[reward] = E[(K/20) ** 3] = E[K^3] / 8000;
    # E[K^3] = mu^3 + 3 mu sigma^2 + (third central moment 0) = 125 + 3 * 5 * 2.5 = 162.5
    est = M.expected_reward(y, np.full(200, 0.5), streams=200, length=2000)
    assert est.mean == pytest.approx(162.5 / 8000, abs=5e-4)  # = 0.0203125, not (0.5 * 0.5) ** 3
    assert est.lo < 162.5 / 8000 < est.hi


def test_expected_reward_streams_are_the_validator_sequence_of_the_documented_draws(rng):
    y, p = _mixed_sequence(rng, 30, invalid_rate=0.2)
    streams, warmup, length = 7, 12, 25
    est = M.expected_reward(y, p, streams=streams, length=length, warmup=warmup, seed=3, level=0.8)
    draws = np.random.default_rng(3).integers(0, 30, size=(streams, warmup + length))
    means = [_port_rewards(y[row], p[row])[warmup:].mean() for row in draws]
    assert est.mean == pytest.approx(np.mean(means), abs=1e-12)
    assert (est.lo, est.hi) == pytest.approx(tuple(np.percentile(means, [10, 90])), abs=1e-12)
    assert (est.streams, est.length) == (streams, length)


def test_expected_reward_default_streams_adapt_to_the_size(rng):
    y, p = _model(rng, 200)
    assert M.expected_reward(y, p).streams >= 200
    y, p = _model(rng, 20_000)
    big = M.expected_reward(y, p)
    assert 20 <= big.streams < 200 and big.length == 20_000


def test_reward_metrics_are_defined_and_reported():
    rewards = {name for name in M.METRIC_NAMES if name.startswith("reward")}
    assert rewards == set(M.REWARD_DEFINITIONS) == {"reward_ordered", "reward_expected"}
    y = np.array([0, 1] * 50)
    p = np.where(y == 1, 0.8, 0.3)
    p[:10] = 0.6
    out = M.split_metrics(y, p)
    assert out["reward_expected"] == M.expected_reward(y, p).mean == M.split_metrics(y, p)["reward_expected"]
    assert out["reward_ordered"] == M.ordered_rewards(y, p)[1]


# --------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------

Y = [0, 1, 1, 0]
P = [0.1, 0.8, 0.6, 0.4]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.ordered_rewards([0, 1, 3], [0.1, 0.2, 0.3]), "only 0 and 1"),
        (lambda: M.ordered_rewards([0, 1], [0.1, 0.2, 0.3]), "same length"),
        (lambda: M.ordered_rewards(Y, P, mcc_window=0), "mcc_window must be a positive integer"),
        (lambda: M.validator_rewards(P, Y, acc_window=2.0), "acc_window must be a positive integer"),
        (lambda: M.validator_rewards([[0.1, 0.2]] * 2, Y), "must be 1-D"),
        (lambda: M.validator_rewards([], []), "empty"),
        (lambda: M.validator_rewards(["a", "b", "c", "d"], Y), "must be numeric"),
        (lambda: M.expected_reward(Y, P, streams=0), "streams must be a positive integer"),
        (lambda: M.expected_reward(Y, P, length=0), "length must be a positive integer"),
        (lambda: M.expected_reward(Y, P, warmup=-1), "warmup must be a non-negative integer"),
        (lambda: M.expected_reward(Y, P, seed=-1), "seed must be a non-negative integer"),
        (lambda: M.expected_reward(Y, P, seed=1.5), "seed must be a non-negative integer"),
        (lambda: M.expected_reward(Y, P, level=1.0), r"level must lie in \(0, 1\)"),
        (lambda: M.expected_reward(Y, P, level="high"), r"level must lie in \(0, 1\)"),
        (lambda: M.expected_reward([0, 2, 1, 0], P), "only 0 and 1"),
        (lambda: M.expected_reward(Y, P[:3]), "same length"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
