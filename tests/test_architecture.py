"""The layout shows the architecture: imports point one way, and each package pins __all__."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import nextbest

SRC = Path(nextbest.__file__).parent
# A stage may import only stages ranked below it; the shared top-level modules import no stage.
RANK = {
    "data": 0,
    "features": 1,
    "models": 2,
    "decide": 3,
    "simulate": 4,
    "measure": 5,
    "serve": 6,
    "cli": 7,
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m.startswith("nextbest.")}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path: Path) -> None:
    rel = path.relative_to(SRC)
    own = rel.parts[0] if len(rel.parts) > 1 else None
    for module in _imports(path):
        target = _stage(module)
        if target is None or target == own:
            continue
        if own is None:
            assert rel.name == "__main__.py", f"{rel} (shared) imports the stage {module}"
            continue
        assert RANK[target] < RANK[own], f"{rel} ({own}) imports {module} ({target})"


PUBLIC = {
    "nextbest": {
        "ConfigError",
        "DataError",
        "InfeasibleError",
        "NextbestError",
        "NotFittedError",
        "__version__",
    },
    "nextbest.data": {
        "Batch",
        "LoadResult",
        "ReadOptions",
        "Reject",
        "TABLES",
        "TableContract",
        "Warehouse",
        "Workspace",
        "contract",
        "erase_customer",
        "ingest",
    },
    "nextbest.serve": {
        "SCOPES",
        "ContactCounts",
        "DecisionRow",
        "KeyInfo",
        "KeyStore",
        "LiveEvent",
        "OnlineDecider",
        "OnlineStore",
        "Personalizer",
        "ServeSettings",
        "Service",
        "ServingCampaign",
        "Snapshot",
        "SyncResult",
        "UnknownCustomer",
        "build_snapshot",
        "create_app",
        "current_snapshot",
        "forget_everywhere",
        "install",
        "personalizer_router",
        "require",
        "serving_campaigns",
        "sync",
    },
    "nextbest.measure": {
        "FUNNELS",
        "GROUPS",
        "FunnelStep",
        "HeadlineKpis",
        "acquisition_profitability",
        "funnel",
        "headline_kpis",
        "kpis_by",
        "METRICS",
        "ArmResult",
        "CampaignRoi",
        "Comparison",
        "Estimate",
        "ExperimentAnalysis",
        "Lift",
        "MetricResult",
        "Plan",
        "Sample",
        "analyze_experiment",
        "campaign_roi",
        "plan_experiment",
        "ESTIMATORS",
        "IPS",
        "SNIPS",
        "DirectMethod",
        "DoublyRobust",
        "OpeInterval",
        "SlateIPS",
        "make_estimator",
        "DecisionLog",
        "action_frequencies",
        "decision_log",
        "read_open_bandit",
        "reward_table",
        "LoggedFeedback",
        "effective_sample_size",
        "POLICY_KINDS",
        "OpeReport",
        "OpeResult",
        "PolicySpec",
        "evaluate_policy",
        "parse_policy",
        "policy_feedback",
        "LOOP_POLICIES",
        "LoopConfig",
        "LoopDay",
        "LoopResult",
        "PolicyTotals",
        "run_loop",
        "IdeaFile",
        "IdeaScore",
        "load_ideas",
        "score_ideas",
    },
    "nextbest.models": {
        "LEVELS",
        "BasketMatrix",
        "SegmentationResult",
        "Segmenter",
        "run_segmentation",
        "association_rules",
        "basket_matrix",
        "cross_sell_lift",
        "frequent_itemsets",
        "warehouse_baskets",
        "BetaGeoModel",
        "CalibratedBoostedClassifier",
        "ClvResult",
        "GammaGammaModel",
        "ProbabilityMetrics",
        "PropensityResult",
        "calibration_table",
        "clv_summary",
        "fit_clv",
        "probability_metrics",
        "train_propensity",
        "warehouse_transactions",
        "DRLearner",
        "TLearner",
        "XLearner",
        "auuc",
        "policy_value",
        "qini_coefficient",
        "qini_curve",
        "uplift_at_k",
        "uplift_curve",
        "KINDS",
        "AFFINITY_LEVELS",
        "AffinityEvaluation",
        "AffinityModel",
        "evaluate_affinity",
        "interactions",
        "ChurnResult",
        "Manifest",
        "ModelStore",
        "TrainOptions",
        "TrainReport",
        "compare_with_bgnbd",
        "train",
        "train_churn",
    },
    "nextbest.features": {
        "SEGMENTS",
        "SHARE_LEVELS",
        "WINDOWS",
        "customer_features",
        "preference_shares",
        "share_columns",
        "decision_features",
        "OUTCOMES",
        "control_arm",
        "experiment_frame",
        "experiments",
        "rfm",
        "rfm_migration",
        "training_set",
    },
    "nextbest.decide": {
        "Allocation",
        "AllocationProblem",
        "Campaign",
        "CampaignFile",
        "ContactPolicy",
        "ContactState",
        "Coupling",
        "DayInputs",
        "DayPlan",
        "DecisionRun",
        "DualipSolver",
        "Explanation",
        "Exploration",
        "OBJECTIVES",
        "Rule",
        "assign",
        "build_problem",
        "compile_rule",
        "contact_state",
        "day_inputs",
        "decide",
        "explain",
        "explore",
        "holdout_mask",
        "load_campaign",
        "offer_posteriors",
        "parse_campaign",
        "plan_day",
        "round_allocation",
        "solve_exact",
    },
    "nextbest.simulate": {
        "POLICIES",
        "DayOutcome",
        "Policy",
        "PopularPolicy",
        "RandomPolicy",
        "RetailEnvironment",
        "SimConfig",
        "SimSummary",
        "World",
        "build_world",
        "simulate",
    },
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_api_is_pinned(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == PUBLIC[name]
    for item in module.__all__:
        assert hasattr(module, item), f"{name}.__all__ names {item}, which is missing"
