"""The idea backlog: personalisation ideas kept in the workspace, scored and ranked.

Ideas live in ``WORKSPACE/ideas.toml`` (pydantic, unknown keys refused)::

    [scoring]                   # weights of the four scores (the defaults)
    value = 0.4
    relevance = 0.2
    feasibility = 0.2
    privacy = 0.2

    [[idea]]
    name = "win back lapsed shoe buyers"
    description = "a new-season shoe sale for members who bought shoes but not lately"
    channel = "email"           # the contact channel: its consent is needed
    eligibility = 'recency_days > 60 and top_category == "shoes"'   # over the customer 360
    category = "shoes"          # what it promotes (relevance); or brand = "..."
    data = ["purchase_history"] # the data it uses (see DATA)
    feasibility = 4             # 1 (new data or systems) .. 5 (runs today)
    expected_lift = 0.10        # relative lift of purchases in the audience, the hypothesis
    margin_rate = 0.3           # margin per unit of order value
    contact_cost = 0.002        # per contact
    contacts = 1                # per customer over the horizon
    horizon_days = 30

Every score is computed on the warehouse as of a date:

- **audience**: customers the rule selects (the rule language of :mod:`nextbest.decide.rules`
  over the customer 360, demographics and consents); **reachable**: those the channel may
  contact (consent, never unsubscribed);
- **privacy**: the share of the audience whose consents cover the channel and every kind of
  data the idea uses (``DATA`` maps each to the consent it needs); an idea using profiling data
  needs ``consent_profiling``. **usable** = reachable and covered;
- **relevance**: how much more the audience buys what the idea promotes than the average
  member: the share of the audience whose top category (or brand) over 365 days is the idea's,
  over that share among all members (1 = no better than average). Without a category or brand,
  the audience's 90-day purchase frequency over the average member's;
- **value**: usable x P(purchase in the horizon) x expected lift x margin per order - usable x
  contacts x contact cost, where P(purchase) is the audience's own 90-day order rate scaled to
  the horizon (capped at 1) and the margin per order its average order value x margin rate;
- **priority**: the weighted sum of value (over the best idea's, floored at 0), relevance
  (capped at 3, over 3), feasibility (over 5) and privacy, in [0, 1]; the backlog is ranked by it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nextbest.config import read_toml, validation_message
from nextbest.data.warehouse import Warehouse
from nextbest.decide.contact import CONSENT_CHANNELS, ContactPolicy, contact_state
from nextbest.decide.rules import compile_rule
from nextbest.errors import ConfigError, DataError
from nextbest.features.customer360 import customer_features

__all__ = ["DATA", "Idea", "IdeaFile", "IdeaScore", "load_ideas", "parse_ideas", "score_ideas"]

DATA: dict[str, str | None] = {
    "purchase_history": None,  # the contract with the customer: no extra consent
    "email_engagement": None,
    "contact_history": None,
    "browsing": "consent_profiling",
    "location": "consent_profiling",
    "demographics": "consent_profiling",
    "profiling": "consent_profiling",
}
"""Kinds of data an idea may use, and the consent column each needs (None: none needed)."""

_RELEVANCE_CAP = 3.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Weights(_Strict):
    value: float = Field(0.4, ge=0)
    relevance: float = Field(0.2, ge=0)
    feasibility: float = Field(0.2, ge=0)
    privacy: float = Field(0.2, ge=0)


class Idea(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    channel: str = "email"
    eligibility: str = Field(min_length=1)
    category: str | None = None
    brand: str | None = None
    data: list[Literal[tuple(DATA)]] = Field(default_factory=list)  # type: ignore[valid-type]
    feasibility: int = Field(ge=1, le=5)
    expected_lift: float = Field(gt=0)
    margin_rate: float = Field(0.3, gt=0, le=1)
    contact_cost: float = Field(0.0, ge=0)
    contacts: float = Field(1.0, ge=0)
    horizon_days: float = Field(30.0, gt=0)


class IdeaFile(_Strict):
    scoring: Weights = Field(default_factory=lambda: Weights())
    idea: list[Idea] = Field(min_length=1)


@dataclass(frozen=True)
class IdeaScore:
    """One idea's scores; ``rank`` 1 is the first to do."""

    name: str
    audience: int
    reachable: int
    usable: int
    privacy: float
    relevance: float
    feasibility: int
    p_purchase: float
    margin_per_order: float
    value: float
    priority: float
    rank: int
    consents_needed: tuple[str, ...]


def parse_ideas(raw: dict[str, object], where: str = "ideas.toml") -> IdeaFile:
    try:
        spec = IdeaFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(where, exc)) from None
    names = [i.name for i in spec.idea]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: idea names must be unique; {', '.join(twice)} repeated")
    return spec


def load_ideas(path: Path) -> IdeaFile:
    """Read and validate an ideas TOML file."""
    raw = read_toml(path, "no idea backlog; write one (see nextbest/measure/ideas.py)")
    return parse_ideas(raw, str(path))


def _members(warehouse: Warehouse, as_of: datetime) -> pd.DataFrame:
    """Every member who joined before ``as_of``: customer 360, demographics and consents."""
    features = customer_features(warehouse, as_of).to_pandas()
    customers = warehouse.table("customers").to_pandas()
    customers["age"] = as_of.year - pd.to_numeric(customers.birth_year, errors="coerce")
    keep = [c for c in customers.columns if c not in features.columns or c == "customer_id"]
    members = features.merge(customers[keep].drop(columns="attributes"), on="customer_id")
    if members.empty:
        raise DataError(f"no member had joined by {as_of:%Y-%m-%d}: load customers first")
    return members.sort_values("customer_id", ignore_index=True)


def _relevance(members: pd.DataFrame, audience: np.ndarray, idea: Idea) -> float:
    if idea.category or idea.brand:
        col, target = (
            ("top_category", idea.category) if idea.category else ("top_brand", idea.brand)
        )
        hit = (members[col] == target).to_numpy(dtype=bool)
        base = hit.mean()
        if not audience.any() or base == 0:
            return 0.0
        return float(hit[audience].mean() / base)
    freq = members.frequency_90.fillna(0).to_numpy(dtype=float)
    base = freq.mean()
    return float(freq[audience].mean() / base) if audience.any() and base > 0 else 0.0


def score_ideas(warehouse: Warehouse, spec: IdeaFile, as_of: datetime) -> list[IdeaScore]:
    """Score every idea of ``spec`` on the warehouse as of ``as_of``, ranked by priority."""
    members = _members(warehouse, as_of)
    n = len(members)
    state = contact_state(warehouse, as_of, ContactPolicy(), customer_ids=list(members.customer_id))
    columns = {c: members[c].to_numpy() for c in members.columns}
    rows = []
    for k, idea in enumerate(spec.idea):
        where = f"idea.{k}.eligibility ({idea.name})"
        audience = compile_rule(idea.eligibility, where=where, known=columns).evaluate(columns, n)
        reachable = audience & state.allowed(idea.channel, as_of)
        needed = sorted({c for d in idea.data if (c := DATA[d])})
        if idea.channel in CONSENT_CHANNELS:
            needed.append(f"consent_{idea.channel}")
        covered = np.ones(n, dtype=bool)
        for col in needed:
            covered &= members[col].fillna(False).to_numpy(dtype=bool)
        usable = reachable & covered
        privacy = float(covered[audience].mean()) if audience.any() else 0.0
        sub = members[usable]
        rate = float(sub.frequency_90.fillna(0).mean()) / 90.0 if len(sub) else 0.0
        p_buy = min(1.0, rate * idea.horizon_days)
        aov = float(sub.aov.dropna().mean()) if sub.aov.notna().any() else 0.0
        margin = aov * idea.margin_rate
        value = len(sub) * (p_buy * idea.expected_lift * margin - idea.contacts * idea.contact_cost)
        rows.append(
            IdeaScore(
                name=idea.name,
                audience=int(audience.sum()),
                reachable=int(reachable.sum()),
                usable=int(usable.sum()),
                privacy=privacy,
                relevance=_relevance(members, audience, idea),
                feasibility=idea.feasibility,
                p_purchase=p_buy,
                margin_per_order=margin,
                value=value,
                priority=0.0,
                rank=0,
                consents_needed=tuple(needed),
            )
        )
    w = spec.scoring
    total = w.value + w.relevance + w.feasibility + w.privacy
    if total <= 0:
        raise ConfigError("scoring: at least one weight must be > 0")
    best = max(max(r.value for r in rows), 1e-12)
    scored = [
        replace(
            r,
            priority=(
                w.value * max(0.0, r.value) / best
                + w.relevance * min(r.relevance, _RELEVANCE_CAP) / _RELEVANCE_CAP
                + w.feasibility * r.feasibility / 5
                + w.privacy * r.privacy
            )
            / total,
        )
        for r in rows
    ]
    scored.sort(key=lambda r: (-r.priority, r.name))
    return [replace(r, rank=i + 1) for i, r in enumerate(scored)]
