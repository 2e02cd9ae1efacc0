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
from natix.calibrate.exits import EXIT_RULES, EXITS, BudgetThreshold, ExitLevels, register_exit
from natix.calibrate.scrc import SCRC

__all__ = ["APS", "CALIBRATORS", "EXITS", "EXIT_RULES", "LAC", "SCRC", "BetaCalibration", "BudgetThreshold",
           "ConformalRiskControl", "DecisionThreshold", "ExitLevels", "IsotonicCalibration", "LearnThenTest",
           "PlattScaling", "SplitConformal", "TemperatureScaling", "register_exit"]
