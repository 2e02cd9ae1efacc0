"""Cascade tier: uncertainty features and failure predictors (exported here), and in their own
modules Gatekeeper tuning (``gatekeeper``), cascade stages (``stages``), the router's thresholds
(``router``), stage compute (``compute``), evaluation and files (``evaluation``) and the curve plot
(``plots``).

Works on run directories and arrays only; never imports ``natix.extract`` (tier 2 must not wake
the GPU).
"""

from natix.cascade.failure import MODELS, FailurePredictor, compare_confidences, vilu_failure_weight
from natix.cascade.features import BASE_FEATURES, failure_labels, load_run_split, uncertainty_features

__all__ = ["BASE_FEATURES", "MODELS", "FailurePredictor", "compare_confidences", "failure_labels",
           "load_run_split", "uncertainty_features", "vilu_failure_weight"]
