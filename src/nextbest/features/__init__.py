"""Features stage: customer 360 as of a date, category and brand shares, decision features,
training sets, RFM."""

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
from nextbest.features.shares import SHARE_LEVELS, preference_shares, share_columns

__all__ = [
    "OUTCOMES",
    "SEGMENTS",
    "SHARE_LEVELS",
    "WINDOWS",
    "control_arm",
    "customer_features",
    "decision_features",
    "experiment_frame",
    "experiments",
    "preference_shares",
    "rfm",
    "rfm_migration",
    "share_columns",
    "training_set",
]
