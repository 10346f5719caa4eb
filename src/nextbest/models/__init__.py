"""Models stage: estimators of response, affinity, value and uplift; basket analysis."""

from __future__ import annotations

from nextbest.models.basket import (
    LEVELS,
    BasketMatrix,
    association_rules,
    basket_matrix,
    cross_sell_lift,
    frequent_itemsets,
    warehouse_baskets,
)
from nextbest.models.classifier import CalibratedBoostedClassifier
from nextbest.models.clv import BetaGeoModel, GammaGammaModel
from nextbest.models.clv_summary import ClvResult, clv_summary, fit_clv, warehouse_transactions
from nextbest.models.evaluation import ProbabilityMetrics, calibration_table, probability_metrics
from nextbest.models.propensity import PropensityResult, train_propensity
from nextbest.models.segmentation import SegmentationResult, Segmenter, run_segmentation

__all__ = [
    "LEVELS",
    "BasketMatrix",
    "BetaGeoModel",
    "CalibratedBoostedClassifier",
    "ClvResult",
    "GammaGammaModel",
    "ProbabilityMetrics",
    "PropensityResult",
    "SegmentationResult",
    "Segmenter",
    "association_rules",
    "basket_matrix",
    "calibration_table",
    "clv_summary",
    "cross_sell_lift",
    "fit_clv",
    "frequent_itemsets",
    "probability_metrics",
    "run_segmentation",
    "train_propensity",
    "warehouse_baskets",
    "warehouse_transactions",
]
