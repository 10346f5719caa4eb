"""Features stage: customer 360 as of a date, decision features, training sets, RFM."""

from __future__ import annotations

from nextbest.features.customer360 import WINDOWS, customer_features, training_set
from nextbest.features.decision_features import decision_features
from nextbest.features.rfm import SEGMENTS, rfm, rfm_migration

__all__ = [
    "SEGMENTS",
    "WINDOWS",
    "customer_features",
    "decision_features",
    "rfm",
    "rfm_migration",
    "training_set",
]
