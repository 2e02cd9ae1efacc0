"""The NATIX reward: the validator's per-answer sequence and what a miner can expect from it.

What this module reproduces of the validator (``natix/validator/reward.py`` and
``natix/validator/miner_performance_tracker.py`` of the StreetVision subnet, unchanged from
2025-12 to 2026-05 but for a move to ``natix/validator/scoring/``; the rules below were checked
by running the tracker's scikit-learn calls, scikit-learn 1.7.2 as locked there):

* Every answer, -1 included, is appended to the miner's history of the last 100 answers (label
  and answer) *before* its reward is computed, so both windows include the current answer.
* The metrics of a window (the last ``min(w, len(history))`` answers) drop the -1 answers
  (``p != -1``), decide with ``np.round(p)`` (half to even: 0.5 is class 0) and call
  scikit-learn. MCC is ``max(0, MCC)``, and 0 unless the window holds both labels and both
  decided classes. A window with no answer left has accuracy 0 and MCC 0.
* The sklearn calls raise on a decision that is not 0 or 1 (``np.round(p)`` of NaN, +-inf,
  p >= 1.5 or p < -0.5; a multiclass target, or a "continuous" one past int64): the validator
  catches the error and uses accuracy 0 and MCC 0 for that window. So such an answer zeroes every reward while it sits in the last 10 answers and the MCC
  term while it sits in the last 100. One exception, from sklearn's binary-target rules: when
  every label in the window is 1, no decision is 0 and all the bad decisions share one value
  (e.g. 2.0), nothing raises and the bad answers count as wrong decisions.
* ``reward = (0.5 * MCC_100 + 0.5 * accuracy_10) ** 3``; 0 for a -1 answer; and 0 for an answer
  ``p < 0`` or ``p > 1`` (NaN passes that check, but its own windows are zeroed, so it scores 0).
  An answer outside [0, 1] that rounds to 0 or 1 (-0.3, 1.2) scores 0 itself but counts in the
  windows as the decision ``np.round(p)``.

What it is not: the validator's *score* of a miner is an exponential moving average of these
rewards, ``score = 0.05 * reward + 0.95 * score`` after each request (``for r in rewards:
score = 0.05 * r + 0.95 * score``), normalised across miners into weights; neither step is
applied here. Each validator keeps its own history per miner (reset when the hotkey changes),
so a miner's answers are split over several such sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from natix.metrics.inputs import check_1d, check_labels, check_same_length, mcc_from_counts

__all__ = [
    "REWARD_DEFINITIONS",
    "RewardEstimate",
    "expected_reward",
    "ordered_rewards",
    "validator_rewards",
]

# The validator's constants: history and MCC window, accuracy window, the reward's exponent
# (REWARD_CURVE_EXPONENT) and the answer that stands for a timeout or an error.
MCC_WINDOW = 100
ACC_WINDOW = 10
REWARD_EXPONENT = 3.0
NO_ANSWER = -1.0

# expected_reward's default number of streams: about this many answer steps in all (~25 ms at
# n = 10,000), but never fewer than _MIN_STREAMS (a percentile interval needs some) nor more
# than _MAX_STREAMS (small sets). _CHUNK bounds the steps computed at once: blocks whose
# temporaries stay in the CPU cache run some 3x faster than one large block.
_STEP_BUDGET = 1_500_000
_MIN_STREAMS = 20
_MAX_STREAMS = 2000
_CHUNK = 1 << 15

REWARD_DEFINITIONS = {
    "reward_ordered": (
        "mean validator reward (MCC over the last 100 answers, accuracy over the last 10, cubed) over the "
        "rows in their stored order; an answer that is -1, NaN or outside [0, 1] counted as a wrong decision"
    ),
    "reward_expected": (
        "expected validator reward of a miner with a full history: mean over random streams of challenges "
        "drawn with replacement from the rows (100 warm-up answers, then n scored), with the validator's "
        "exact rules for -1, NaN and out-of-range answers"
    ),
}


@dataclass(frozen=True)
class RewardEstimate:
    """The expected validator reward and a percentile interval over streams.

    Attributes
    ----------
    mean : float
        Mean over streams of a stream's mean reward (its last ``length`` steps).
    lo, hi : float
        Percentile interval of a stream's mean reward at the requested level.
    streams : int
        Number of streams drawn.
    length : int
        Scored answers per stream (after the warm-up).
    """

    mean: float
    lo: float
    hi: float
    streams: int
    length: int


# --------------------------------------------------------------------------------------------
# The sequence of rewards
# --------------------------------------------------------------------------------------------


def validator_rewards(y_prob, y_true, *, mcc_window: int = MCC_WINDOW, acc_window: int = ACC_WINDOW
                      ) -> np.ndarray:
    """The validator's reward after each answer, answers in arrival order.

    The answers come first (``validator_rewards(probs, labels)``), as the validator reads a
    miner's response before its label; every other metric of natix takes the labels first.

    reward_t = ``(0.5 * max(0, MCC over the kept answers among the last mcc_window) + 0.5 *
    accuracy over the kept answers among the last acc_window) ** 3``, windows including answer t;
    -1 answers take a slot in the windows but are not kept, and score 0 themselves. Answers
    outside [0, 1] score 0; one whose ``np.round`` is not 0 or 1 (NaN, +-inf, p >= 1.5,
    p < -0.5) also zeroes both metrics of every window it sits in, except when all the window's
    labels are 1 (the module docstring has the exact rules and their source).

    Parameters
    ----------
    y_prob : array of shape (n,), the miner's answers: any float, -1 for no answer
    y_true : array of shape (n,), labels in {0, 1}, in the order the requests arrived
    mcc_window, acc_window : int >= 1
        The validator's windows (100 and 10). The history holds ``max`` of the two.

    Returns
    -------
    ndarray of shape (n,), float64 in [0, 1]
    """
    y, p = _sequence_inputs(y_true, y_prob, mcc_window, acc_window)
    return _rewards(y[None, :], p[None, :], mcc_window, acc_window)[0]


def ordered_rewards(y_true, y_prob, *, mcc_window: int = MCC_WINDOW, acc_window: int = ACC_WINDOW
                    ) -> tuple[np.ndarray, float]:
    """Validator rewards of the answers in their stored order, every invalid answer a mistake.

    The same sequence as :func:`validator_rewards` after replacing each answer that is -1, NaN or
    outside [0, 1] by the wrong decision ``1 - y``: simpler than the validator (which zeroes
    windows for some invalid answers and drops -1 answers from its metrics) and equal to it when
    every answer lies in [0, 1].

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}, in the order the requests arrived
    y_prob : array of shape (n,), the miner's answers (any float; invalid ones count as wrong)
    mcc_window, acc_window : int >= 1

    Returns
    -------
    rewards : ndarray of shape (n,), in [0, 1]
    mean_reward : float
    """
    y, p = _sequence_inputs(y_true, y_prob, mcc_window, acc_window)
    answers = np.where((p >= 0.0) & (p <= 1.0), p, 1.0 - y)  # NaN fails both comparisons
    rewards = _rewards(y[None, :], answers[None, :], mcc_window, acc_window)[0]
    return rewards, float(rewards.mean())


def _sequence_inputs(y_true, y_prob, mcc_window, acc_window) -> tuple[np.ndarray, np.ndarray]:
    """Validated labels, answers and windows."""
    y = check_labels(y_true)
    p = check_1d(y_prob, "y_prob")
    check_same_length(y_true=y, y_prob=p)
    _integer(mcc_window, "mcc_window", 1)
    _integer(acc_window, "acc_window", 1)
    return y, p


def _integer(value, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (0 or 1), or a one-line ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer, got {value!r}")
    return int(value)


def _rewards(y: np.ndarray, p: np.ndarray, mcc_window: int, acc_window: int) -> np.ndarray:
    """Validator rewards of each row of answers ``p`` (shape (streams, steps)) to labels ``y``."""
    counts = _Counts(y, p)
    base = 0.5 * _mcc(counts, mcc_window) + 0.5 * _accuracy(counts, acc_window)
    base[(p < 0.0) | (p > 1.0)] = 0.0  # the validator's compute_penalty (NaN passes it)
    rewards = base**REWARD_EXPONENT
    rewards[p == NO_ANSWER] = 0.0
    return rewards


def _accuracy(counts: _Counts, w: int) -> np.ndarray:
    """The validator's accuracy over each window of the last ``w`` answers (0 where sklearn raises)."""
    n, n_ok = counts.n(w), counts.n_ok(w)
    tp, fp, pos = counts.window("tp", w), counts.window("fp", w), counts.window("pos", w)
    correct = n_ok - pos - fp + tp  # tn + tp
    scored = n > 0  # an empty window has accuracy 0
    if counts.bad is not None:
        scored = scored & ((n == n_ok) | _all_positive_exception(counts, w, n - n_ok, pos - tp))
    return np.where(scored, correct / np.maximum(n, 1), 0.0)


def _mcc(counts: _Counts, w: int) -> np.ndarray:
    """The validator's max(0, MCC) over each window of the last ``w`` answers (0 where sklearn raises)."""
    n_ok = counts.n_ok(w)
    tp, fp, pos = counts.window("tp", w), counts.window("fp", w), counts.window("pos", w)
    # 0 when one label or one decided class is present, as the validator's explicit check
    mcc = np.maximum(0.0, mcc_from_counts(tp, n_ok - pos - fp, fp, pos - tp))
    return mcc if counts.bad is None else np.where(counts.n(w) == n_ok, mcc, 0.0)


class _Counts:
    """Cumulative counts along the answers of a batch of rows, read back per window.

    ``kept``: not -1. ``ok``: kept and ``np.round(p)`` is 0 or 1, i.e. -0.5 <= p < 1.5 (half to
    even: -0.5 rounds to -0.0, 1.5 to 2.0); the others kept are ``bad``. ``tp``/``fp``: ok and
    deciding 1 (p > 0.5) on a positive/negative; ``pos``: ok positives. ``kept`` and ``bad`` are
    None when every answer is kept / none is bad (then n and n_ok need no sums).
    """

    def __init__(self, y: np.ndarray, p: np.ndarray):
        self.steps = p.shape[-1]
        self._dtype = np.int32 if self.steps < 2**31 else np.int64
        kept = p != NO_ANSWER  # NaN is kept
        ok = kept & (p >= -0.5) & (p < 1.5)
        positive, one = y == 1, ok & (p > 0.5)
        self._cum = {"tp": self._cumsum(one & positive), "fp": self._cumsum(one & ~positive),
                     "pos": self._cumsum(ok & positive)}
        self.kept = None if kept.all() else self._cumsum(kept)
        bad = kept & ~ok
        self.bad = None
        if bad.any():
            self.bad = self._cumsum(bad)
            decision = np.round(p)
            self._cum["kept_neg"] = self._cumsum(kept & ~positive)
            # sklearn refuses decisions it cannot read as int64 ("continuous" or not finite)
            self._cum["raising"] = self._cumsum(bad & ~((decision >= -(2.0**63)) & (decision < 2.0**63)))
            self.run_start = _bad_run_starts(decision, bad)

    def _cumsum(self, x: np.ndarray) -> np.ndarray:
        return np.cumsum(x, axis=-1, dtype=self._dtype)  # integer counts stay exact

    @staticmethod
    def _last(cumulative: np.ndarray, w: int) -> np.ndarray:
        out = cumulative.copy()
        out[..., w:] -= cumulative[..., :-w]
        return out

    def window(self, name: str, w: int) -> np.ndarray:
        """Count of ``name`` over the last ``w`` answers, current included."""
        return self._last(self._cum[name], w)

    def n(self, w: int) -> np.ndarray:
        """Kept answers among the last ``w``."""
        if self.kept is None:
            return np.minimum(np.arange(1, self.steps + 1, dtype=self._dtype), w)
        return self._last(self.kept, w)

    def n_ok(self, w: int) -> np.ndarray:
        """Kept answers deciding 0 or 1 among the last ``w``."""
        return self.n(w) if self.bad is None else self.n(w) - self._last(self.bad, w)


def _all_positive_exception(counts: _Counts, w: int, n_bad: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Windows whose bad decisions do not make sklearn raise.

    sklearn reads labels and decisions together as a binary target when they hold two values at
    most, and then raises nothing as ``pos_label=1`` is among them: labels all 1, no decision 0
    and one bad decision value (finite and castable to int64). The bad answers count as wrong.
    """
    # bad answers since the run of the latest one began: all the window's iff they share one value
    in_run = counts.bad - np.take_along_axis(counts.bad, counts.run_start, axis=-1) + 1
    return ((n_bad > 0) & (in_run >= n_bad) & (fn == 0) & (counts.window("kept_neg", w) == 0)
            & (counts.window("raising", w) == 0))


def _bad_run_starts(decision: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Where the run of the latest bad answer up to each step began (0 before any bad answer).

    A run is a maximal sequence of bad answers (skipping the others) with one decision value.
    """
    steps = np.arange(bad.shape[-1])
    last_bad = np.maximum.accumulate(np.where(bad, steps, -1), axis=-1)
    previous_bad = np.concatenate([np.full_like(last_bad[..., :1], -1), last_bad[..., :-1]], axis=-1)
    previous_value = np.take_along_axis(decision, np.maximum(previous_bad, 0), axis=-1)
    # NaN != NaN starts a new run each time, harmless: a NaN makes its windows raise anyway
    starts = bad & ((previous_bad < 0) | (decision != previous_value))
    return np.maximum(np.maximum.accumulate(np.where(starts, steps, -1), axis=-1), 0)


# --------------------------------------------------------------------------------------------
# Expected reward over random streams of challenges
# --------------------------------------------------------------------------------------------


def expected_reward(y_true, y_prob, *, streams: int | None = None, length: int | None = None,
                    warmup: int = MCC_WINDOW, seed: int = 0, level: float = 0.95) -> RewardEstimate:
    """The reward a miner answering with these probabilities can expect from the validator.

    The validator sends a random stream of challenges. Each of ``streams`` streams draws
    ``warmup + length`` (label, answer) pairs with replacement from the rows, in random order,
    computes :func:`validator_rewards` (exact rules for -1, NaN and out-of-range answers) and
    averages its last ``length`` rewards: the warm-up fills the windows, as for a miner with a
    history. The draws are ``np.random.default_rng(seed).integers(0, n, size=(streams, warmup +
    length))``, one row per stream. The streams carry the rows' label mix: pass a balanced set
    to mirror the validator's 50/50 challenges.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_prob : array of shape (n,), the miner's answers (any float, -1 for no answer)
    streams : int >= 1, optional
        Default: about 1.5 million answer steps in all, between 20 and 2000 streams (n = 200:
        2000 streams, ~10 ms; n = 10,000: 148 streams, ~25 ms; n = 100,000: 20 streams, ~40 ms).
    length : int >= 1, optional
        Scored answers per stream; default n.
    warmup : int >= 0
        Answers drawn before scoring starts; default 100 (the MCC window).
    seed : int >= 0
    level : float in (0, 1)
        Coverage of the percentile interval ``[lo, hi]`` over the streams' mean rewards (a
        bootstrap interval of one stream's mean reward, not of ``mean``).

    Returns
    -------
    RewardEstimate
        ``mean`` over streams, ``lo``/``hi`` and the ``streams`` and ``length`` used.
    """
    y = check_labels(y_true)
    p = check_1d(y_prob, "y_prob")
    check_same_length(y_true=y, y_prob=p)
    length = len(y) if length is None else _integer(length, "length", 1)
    steps = _integer(warmup, "warmup", 0) + length
    streams = _default_streams(steps) if streams is None else _integer(streams, "streams", 1)
    seed = _integer(seed, "seed", 0)
    if isinstance(level, bool) or not isinstance(level, (int, float, np.number)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    draws = np.random.default_rng(seed).integers(0, len(y), size=(streams, steps))
    rows = max(1, _CHUNK // steps)
    means = np.concatenate([
        _rewards(y[block], p[block], MCC_WINDOW, ACC_WINDOW)[:, warmup:].mean(axis=1)
        for block in (draws[i:i + rows] for i in range(0, streams, rows))
    ])
    lo, hi = np.percentile(means, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return RewardEstimate(float(means.mean()), float(lo), float(hi), streams, length)


def _default_streams(steps: int) -> int:
    return int(np.clip(_STEP_BUDGET // steps, _MIN_STREAMS, _MAX_STREAMS))
