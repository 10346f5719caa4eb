"""Features stage: customer 360 as of a date, decision features, training sets, RFM."""

from __future__ import annotations

from nextbest.features.customer360 import WINDOWS, customer_features, training_set
from nextbest.features.decision_features import decision_features
from nextbest.features.experiment_features import (
    OUTCOMES,
    control_arm,
    experiment_frame,
    experiments,
)
from nextbest.features.rfm import SEGMENTS, rfm, rfm_migration

__all__ = [
    "OUTCOMES",
    "SEGMENTS",
    "WINDOWS",
    "control_arm",
    "customer_features",
    "decision_features",
    "experiment_frame",
    "experiments",
    "rfm",
    "rfm_migration",
    "training_set",
]
