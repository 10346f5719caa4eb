"""Features stage: customer 360 as of a date, training sets, RFM and segment migration."""

from __future__ import annotations

from nextbest.features.customer360 import WINDOWS, customer_features, training_set
from nextbest.features.rfm import SEGMENTS, rfm, rfm_migration

__all__ = ["SEGMENTS", "WINDOWS", "customer_features", "rfm", "rfm_migration", "training_set"]
