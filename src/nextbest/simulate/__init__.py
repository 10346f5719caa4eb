"""A synthetic flash-sale retailer with known ground truth, and its environment.

- :func:`simulate` writes the canonical tables and the ground truth of a run;
- :class:`RetailEnvironment` is the same retailer, one day at a time, for closed-loop runs of
  any policy (:meth:`RetailEnvironment.step`);
- :mod:`nextbest.simulate.response` holds the response model, the ground truth itself.
"""

from __future__ import annotations

from nextbest.simulate.config import SimConfig, SimSummary
from nextbest.simulate.environment import DayOutcome, RetailEnvironment
from nextbest.simulate.policies import POLICIES, Policy, PopularPolicy, RandomPolicy
from nextbest.simulate.run import simulate
from nextbest.simulate.world import World, build_world

__all__ = [
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
]
