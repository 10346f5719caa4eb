"""Measure stage: KPIs, experiments, campaign ROI and off-policy evaluation."""

from __future__ import annotations

from nextbest.measure.kpi import HeadlineKpis, headline_kpis

__all__ = ["HeadlineKpis", "headline_kpis"]
