"""Models stage: estimators of response, affinity, value and uplift; basket analysis."""

from __future__ import annotations

from nextbest.models.affinity import (
    AFFINITY_LEVELS,
    AffinityEvaluation,
    AffinityModel,
    evaluate_affinity,
    interactions,
)
from nextbest.models.basket import (
    LEVELS,
    BasketMatrix,
    association_rules,
    basket_matrix,
    cross_sell_lift,
    frequent_itemsets,
    warehouse_baskets,
)
from nextbest.models.churn import ChurnResult, compare_with_bgnbd, train_churn
from nextbest.models.classifier import CalibratedBoostedClassifier
from nextbest.models.clv import BetaGeoModel, GammaGammaModel
from nextbest.models.clv_summary import ClvResult, clv_summary, fit_clv, warehouse_transactions
from nextbest.models.evaluation import ProbabilityMetrics, calibration_table, probability_metrics
from nextbest.models.propensity import PropensityResult, train_propensity
from nextbest.models.segmentation import SegmentationResult, Segmenter, run_segmentation
from nextbest.models.store import Manifest, ModelStore
from nextbest.models.training import KINDS, TrainOptions, TrainReport, train
from nextbest.models.uplift import DRLearner, TLearner, XLearner
from nextbest.models.uplift_metrics import (
    auuc,
    policy_value,
    qini_coefficient,
    qini_curve,
    uplift_at_k,
    uplift_curve,
)

__all__ = [
    "AFFINITY_LEVELS",
    "KINDS",
    "LEVELS",
    "AffinityEvaluation",
    "AffinityModel",
    "BasketMatrix",
    "BetaGeoModel",
    "CalibratedBoostedClassifier",
    "ChurnResult",
    "ClvResult",
    "DRLearner",
    "GammaGammaModel",
    "Manifest",
    "ModelStore",
    "ProbabilityMetrics",
    "PropensityResult",
    "SegmentationResult",
    "Segmenter",
    "TLearner",
    "TrainOptions",
    "TrainReport",
    "XLearner",
    "association_rules",
    "auuc",
    "basket_matrix",
    "calibration_table",
    "clv_summary",
    "compare_with_bgnbd",
    "cross_sell_lift",
    "evaluate_affinity",
    "fit_clv",
    "frequent_itemsets",
    "interactions",
    "policy_value",
    "probability_metrics",
    "qini_coefficient",
    "qini_curve",
    "run_segmentation",
    "train",
    "train_churn",
    "train_propensity",
    "uplift_at_k",
    "uplift_curve",
    "warehouse_baskets",
    "warehouse_transactions",
]
