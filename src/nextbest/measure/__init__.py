"""Measure stage: KPIs, experiments, campaign ROI and off-policy evaluation."""

from __future__ import annotations

from nextbest.measure.experiment import (
    METRICS,
    ArmResult,
    Comparison,
    ExperimentAnalysis,
    MetricResult,
    analyze_experiment,
)
from nextbest.measure.funnels import (
    FUNNELS,
    GROUPS,
    FunnelStep,
    acquisition_profitability,
    funnel,
    kpis_by,
)
from nextbest.measure.ideas import IdeaFile, IdeaScore, load_ideas, score_ideas
from nextbest.measure.kpi import HeadlineKpis, headline_kpis
from nextbest.measure.loop import LoopConfig, LoopDay, LoopResult, PolicyTotals, run_loop
from nextbest.measure.loop_policies import LOOP_POLICIES
from nextbest.measure.ope import (
    ESTIMATORS,
    IPS,
    SNIPS,
    DirectMethod,
    DoublyRobust,
    OpeInterval,
    SlateIPS,
    make_estimator,
)
from nextbest.measure.ope_data import (
    DecisionLog,
    action_frequencies,
    decision_log,
    read_open_bandit,
    reward_table,
)
from nextbest.measure.ope_feedback import (
    LoggedFeedback,
    effective_sample_size,
)
from nextbest.measure.ope_policies import (
    POLICY_KINDS,
    OpeReport,
    OpeResult,
    PolicySpec,
    evaluate_policy,
    parse_policy,
    policy_feedback,
)
from nextbest.measure.roi import CampaignRoi, campaign_roi
from nextbest.measure.stats import Estimate, Lift, Plan, Sample, plan_experiment

__all__ = [
    "ESTIMATORS",
    "FUNNELS",
    "GROUPS",
    "IPS",
    "LOOP_POLICIES",
    "METRICS",
    "POLICY_KINDS",
    "SNIPS",
    "ArmResult",
    "CampaignRoi",
    "Comparison",
    "DecisionLog",
    "DirectMethod",
    "DoublyRobust",
    "Estimate",
    "ExperimentAnalysis",
    "FunnelStep",
    "HeadlineKpis",
    "IdeaFile",
    "IdeaScore",
    "Lift",
    "LoggedFeedback",
    "LoopConfig",
    "LoopDay",
    "LoopResult",
    "MetricResult",
    "OpeInterval",
    "OpeReport",
    "OpeResult",
    "Plan",
    "PolicySpec",
    "PolicyTotals",
    "Sample",
    "SlateIPS",
    "acquisition_profitability",
    "action_frequencies",
    "analyze_experiment",
    "campaign_roi",
    "decision_log",
    "effective_sample_size",
    "evaluate_policy",
    "funnel",
    "headline_kpis",
    "kpis_by",
    "load_ideas",
    "make_estimator",
    "parse_policy",
    "plan_experiment",
    "policy_feedback",
    "read_open_bandit",
    "reward_table",
    "run_loop",
    "score_ideas",
]
