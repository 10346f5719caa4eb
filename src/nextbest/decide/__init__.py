"""Decide stage: eligibility, contact policy, scoring, constrained allocation, exploration."""

from __future__ import annotations

from nextbest.decide.assign import assign
from nextbest.decide.batch import DayPlan, build_problem, plan_day
from nextbest.decide.campaign import (
    OBJECTIVES,
    Campaign,
    CampaignFile,
    load_campaign,
    parse_campaign,
)
from nextbest.decide.contact import ContactPolicy, ContactState, contact_state
from nextbest.decide.day import DayInputs, day_inputs, holdout_mask
from nextbest.decide.dualip import DualipSolver
from nextbest.decide.exact import solve_exact
from nextbest.decide.explain import Explanation, explain
from nextbest.decide.explore import Exploration, explore, offer_posteriors
from nextbest.decide.problem import Allocation, AllocationProblem, Coupling
from nextbest.decide.rounding import round_allocation
from nextbest.decide.rules import Rule, compile_rule
from nextbest.decide.run import DecisionRun, decide

__all__ = [
    "OBJECTIVES",
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
]
