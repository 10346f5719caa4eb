"""Models stage: estimators of response, affinity, value; basket analysis."""

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
from nextbest.models.segmentation import SegmentationResult, Segmenter, run_segmentation

__all__ = [
    "LEVELS",
    "BasketMatrix",
    "SegmentationResult",
    "Segmenter",
    "association_rules",
    "basket_matrix",
    "cross_sell_lift",
    "frequent_itemsets",
    "run_segmentation",
    "warehouse_baskets",
]
