"""Calibration speed: every calibrator, conformal predictor, exit threshold and state round trip
on 100,000 calibration scores, timed in one process (target: each ≤ 2 s on a 2-core CPU).

    python benchmarks/calibrate.py [--n 100000]

Scores are miscalibrated on purpose (logits stretched by 2 and shifted) so every method has
something to fix. scikit-learn's own calibrators (`_SigmoidCalibration`, `IsotonicRegression`)
are timed beside ours as the obvious alternative where one exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many fits")
    args = ap.parse_args()

    from sklearn.calibration import _SigmoidCalibration
    from sklearn.isotonic import IsotonicRegression

    from natix import metrics as M
    from natix.calibrate.calibrators import (
        BetaCalibration,
        DecisionThreshold,
        IsotonicCalibration,
        PlattScaling,
        TemperatureScaling,
    )
    from natix.calibrate.conformal import ConformalRiskControl, LearnThenTest, SplitConformal
    from natix.calibrate.exits import BudgetThreshold
    from natix.calibrate.scrc import SCRC
    from natix.jsonio import dumps

    rng = np.random.default_rng(0)
    n = args.n
    y = rng.integers(0, 2, n)
    z = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    p = 1 / (1 + np.exp(-(2.0 * z + 0.3)))  # over-confident and shifted
    conf = M.confidence(p)
    errors = M.decision_errors(y, p)
    test_conf = M.confidence(p[: n // 2])
    isotonic = IsotonicCalibration().fit(p, y)

    cases = [
        ("TemperatureScaling", lambda: TemperatureScaling().fit(p, y)),
        ("PlattScaling", lambda: PlattScaling().fit(p, y)),
        ("  scikit-learn _SigmoidCalibration (on logits)", lambda: _SigmoidCalibration().fit(np.log(p / (1 - p)), y)),
        ("BetaCalibration", lambda: BetaCalibration().fit(p, y)),
        ("IsotonicCalibration", lambda: IsotonicCalibration().fit(p, y)),
        ("  scikit-learn IsotonicRegression", lambda: IsotonicRegression(out_of_bounds="clip").fit(p, y)),
        ("DecisionThreshold (MCC)", lambda: DecisionThreshold(objective="mcc").fit(p, y)),
        ("DecisionThreshold (NATIX reward)", lambda: DecisionThreshold(objective="reward").fit(p, y)),
        ("DecisionThreshold (FNR <= 0.05)", lambda: DecisionThreshold(objective="fnr", target_fnr=0.05).fit(p, y)),
        ("SplitConformal (LAC)", lambda: SplitConformal(score="lac", alpha=0.1).fit(p, y)),
        ("SplitConformal (APS)", lambda: SplitConformal(score="aps", alpha=0.1).fit(p, y)),
        ("SplitConformal (LAC, Mondrian)", lambda: SplitConformal(score="lac", alpha=0.1, mondrian=True).fit(p, y)),
        ("ConformalRiskControl (FNR)", lambda: ConformalRiskControl(loss="fnr", alpha=0.1).fit(p, y)),
        ("LearnThenTest (binomial)", lambda: LearnThenTest(alpha=0.1, delta=0.1).fit(conf, errors)),
        ("LearnThenTest (Hoeffding-Bentkus)",
         lambda: LearnThenTest(alpha=0.1, delta=0.1, p_value="hb").fit(conf, errors)),
        ("SCRC inductive", lambda: SCRC(alpha=0.1, delta=0.1, acceptance=0.8).fit(p, y)),
        ("SCRC transductive", lambda: SCRC(alpha=0.1, delta=0.1, acceptance=0.8, mode="transductive").fit(
            p, y, test_confidence=test_conf)),
        ("BudgetThreshold (defer <= 20%)", lambda: BudgetThreshold(budget=0.2).fit(conf)),
        ("IsotonicCalibration state -> JSON -> state", lambda: IsotonicCalibration.from_state(
            json.loads(dumps(isotonic.to_state())))),
    ]
    print(f"\ncalibration benchmark: fit on {n:,} scores, best of {args.repeats}")
    head = f"{'method':<48} {'fit seconds':>12} {'<= 2 s':>7}"
    print(head)
    print("-" * len(head))
    for name, fn in cases:
        best = np.inf
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        print(f"{name:<48} {best:>12.3f} {'yes' if best <= 2 else 'NO':>7}")


if __name__ == "__main__":
    sys.exit(main())
