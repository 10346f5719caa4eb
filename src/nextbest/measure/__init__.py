"""Measure stage: KPIs, experiments, campaign ROI and off-policy evaluation."""

from __future__ import annotations

from nextbest.measure.funnels import (
    FUNNELS,
    GROUPS,
    FunnelStep,
    acquisition_profitability,
    funnel,
    kpis_by,
)
from nextbest.measure.kpi import HeadlineKpis, headline_kpis

__all__ = [
    "FUNNELS",
    "GROUPS",
    "FunnelStep",
    "HeadlineKpis",
    "acquisition_profitability",
    "funnel",
    "headline_kpis",
    "kpis_by",
]
