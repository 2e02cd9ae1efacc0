"""Calibration and certified thresholds on scores and labels (never imports heads or extract)."""

from natix.calibrate.calibrators import (
                                         CALIBRATORS,
                                         BetaCalibration,
                                         DecisionThreshold,
                                         IsotonicCalibration,
                                         PlattScaling,
                                         TemperatureScaling,
)
from natix.calibrate.conformal import APS, LAC, ConformalRiskControl, LearnThenTest, SplitConformal
from natix.calibrate.scrc import SCRC

__all__ = ["APS", "CALIBRATORS", "LAC", "SCRC", "BetaCalibration", "ConformalRiskControl", "DecisionThreshold",
           "IsotonicCalibration", "LearnThenTest", "PlattScaling", "SplitConformal", "TemperatureScaling"]
