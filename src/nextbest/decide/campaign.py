"""Campaigns as configuration: a TOML file read into pydantic models, unknown keys refused.

A campaign says what to send, to whom, under which promises, and how it is measured::

    [campaign]
    name = "daily-email"
    channel = "email"
    objective = "profit"        # profit, conversions, revenue or incremental_margin
    slots = 3                   # offers per message
    send_time = "12:00"         # UTC; offers must be open then
    eligibility = 'age >= 18'   # a rule over customer 360 columns (see decide/rules.py)
    max_per_brand = 1           # diversity: offers of one brand in a slate
    budget = 2500.0             # the campaign's budget over the expected cost of its offers
    capacity = 50000            # most offers sent in all (the channel's capacity, in slots)
    solver = "auto"             # auto (HiGHS when small), highs or dualip
    position_weights = [1.0, 0.7, 0.5]   # response in slot j relative to slot 1

    [campaign.levers]           # value multipliers: offer x category x brand x campaign
    campaign = 1.0
    category = { shoes = 1.2 }
    brand = { "Maison 012" = 0.8 }
    offer = { "S001-03" = 1.5 }

    [[campaign.shares]]         # at least / at most a share of all slots
    tag = "new_designer"        # offers carrying this tag (or: brand = "...")
    min = 0.2

    [[campaign.minimums]]       # at least this many slots for a brand (a commitment)
    brand = "Maison 007"
    count = 500

    [campaign.exploration]
    share = 0.05                # of slots drawn from the stochastic policy
    method = "thompson"         # or epsilon
    novelty_share = 0.5         # of those, drawn among offers new to the customer

    [campaign.experiment]
    name = "daily-email"        # decisions carry it, with the arm
    holdout = 0.1               # share of customers kept out (control arm "holdout")
    salt = "2026"               # assignment = hash(salt, experiment, customer)
    arms = { optimised = 1.0 }  # treatment arms sharing the rest, by weight (the default)

    [campaign.hypothesis]       # written before launch; measured by `nextbest roi`
    metric = "conversion"       # conversion, revenue, margin, visit, open or click
    expected_lift = 0.05        # relative to the holdout (and/or expected_absolute_lift)
    minimum_detectable_effect = 0.03   # relative, like expected_lift
    expected_value = 12000.0    # incremental margin expected over the treated, in money
    window_days = 14            # outcomes counted this long after each assignment
    alpha = 0.05                # significance level of the test
    power = 0.8                 # power wanted at the minimum detectable effect

    [campaign.contact]          # the contact policy (see decide/contact.py)
    per_week = { email = 5 }

    [offers."S001-03"]          # per offer, over the offers table
    budget = 300.0              # most expected cost of this offer
    stock = 40                  # overrides the offers table's capacity (expected units)
    redemption_cost = 4.0       # cost per expected purchase (a discount paid)
    eligibility = 'region == "north"'
    exclude = false

Errors name the file and the key: ``campaign.toml: 'campaign.shares.0.min': Input should be
less than or equal to 1 (got 1.5)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nextbest.config import read_toml, validation_message
from nextbest.data.schema import CHANNELS
from nextbest.decide.contact import ContactPolicy
from nextbest.decide.rules import compile_rule
from nextbest.errors import ConfigError

__all__ = [
    "HYPOTHESIS_METRICS",
    "OBJECTIVES",
    "Campaign",
    "CampaignFile",
    "Experiment",
    "Exploration",
    "Hypothesis",
    "Levers",
    "Minimum",
    "OfferSettings",
    "Share",
    "load_campaign",
    "parse_campaign",
]

OBJECTIVES = ("profit", "conversions", "revenue", "incremental_margin")
HYPOTHESIS_METRICS = ("conversion", "revenue", "margin", "visit", "open", "click")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _rule(value: str | None, where: str) -> str | None:
    if value is not None:
        compile_rule(value, where=where)
    return value


class Levers(_Strict):
    """Business levers: ``value x campaign x category[c] x brand[b] x offer[o]``."""

    campaign: float = Field(1.0, ge=0)
    category: dict[str, float] = Field(default_factory=dict)
    brand: dict[str, float] = Field(default_factory=dict)
    offer: dict[str, float] = Field(default_factory=dict)

    @field_validator("category", "brand", "offer")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"levers must be >= 0, got {bad}")
        return value


class Share(_Strict):
    """A minimum and/or maximum share of all slots for offers with a tag or of a brand."""

    tag: str | None = None
    brand: str | None = None
    min: float | None = Field(None, ge=0, le=1)
    max: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _one(self) -> Share:
        if (self.tag is None) == (self.brand is None):
            raise ValueError("give exactly one of tag or brand")
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    @property
    def label(self) -> str:
        return f"tag {self.tag}" if self.tag is not None else f"brand {self.brand}"


class Minimum(_Strict):
    brand: str
    count: int = Field(ge=1)


class Exploration(_Strict):
    share: float = Field(0.0, ge=0, le=1)
    method: Literal["thompson", "epsilon"] = "thompson"
    novelty_share: float = Field(0.0, ge=0, le=1)


class Experiment(_Strict):
    name: str = Field(min_length=1)
    holdout: float = Field(0.1, ge=0, lt=1)
    salt: str = ""
    arms: dict[str, float] = Field(default_factory=lambda: {"optimised": 1.0}, min_length=1)

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not v > 0}
        if bad:
            raise ValueError(f"arm weights must be > 0, got {bad}")
        if "holdout" in value:
            raise ValueError("'holdout' is the control arm: set its share with holdout = ...")
        return value

    def weights(self) -> dict[str, float]:
        """Every arm's share, the holdout first: ``{"holdout": h, arm: (1 - h) w / sum w}``."""
        total = sum(self.arms.values())
        shares = {k: (1 - self.holdout) * w / total for k, w in self.arms.items()}
        return {"holdout": self.holdout, **shares} if self.holdout > 0 else shares


class Hypothesis(_Strict):
    """What the campaign is expected to achieve, stated before launch."""

    metric: Literal["conversion", "revenue", "margin", "visit", "open", "click"]
    expected_lift: float | None = Field(None, gt=0, description="relative to the holdout")
    expected_absolute_lift: float | None = Field(None, gt=0)
    minimum_detectable_effect: float | None = Field(None, gt=0, description="relative")
    expected_value: float | None = Field(None, gt=0, description="incremental margin, money")
    window_days: float = Field(14, gt=0)
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)

    @model_validator(mode="after")
    def _some_lift(self) -> Hypothesis:
        if self.expected_lift is None and self.expected_absolute_lift is None:
            raise ValueError("give expected_lift (relative), expected_absolute_lift or both")
        return self


class OfferSettings(_Strict):
    budget: float | None = Field(None, ge=0)
    stock: float | None = Field(None, ge=0)
    redemption_cost: float = Field(0.0, ge=0)
    eligibility: str | None = None
    exclude: bool = False


class Campaign(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    channel: str = "email"
    objective: Literal["profit", "conversions", "revenue", "incremental_margin"] = "profit"
    slots: int = Field(3, ge=1, le=50)
    send_time: str = "12:00"
    eligibility: str | None = None
    max_per_brand: int | None = Field(1, ge=1)
    budget: float | None = Field(None, ge=0)
    capacity: int | None = Field(None, ge=0)
    solver: Literal["auto", "highs", "dualip"] = "auto"
    exact_limit: int = Field(100_000, ge=0, description="auto: HiGHS up to this many pairs")
    position_weights: list[float] = Field(default_factory=list)
    levers: Levers = Field(default_factory=lambda: Levers())
    shares: list[Share] = Field(default_factory=list)
    minimums: list[Minimum] = Field(default_factory=list)
    exploration: Exploration = Field(default_factory=lambda: Exploration())
    experiment: Experiment | None = None
    hypothesis: Hypothesis | None = None
    contact: ContactPolicy = Field(default_factory=lambda: ContactPolicy())

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if value not in CHANNELS:
            raise ValueError(f"unknown channel {value!r}; expected one of {', '.join(CHANNELS)}")
        return value

    @field_validator("send_time")
    @classmethod
    def _time(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"expected HH:MM (24 h, UTC), got {value!r}")
        return value

    @field_validator("position_weights")
    @classmethod
    def _positions(cls, value: list[float]) -> list[float]:
        if any(not 0 < w <= 1.5 for w in value):
            raise ValueError(f"position weights must be in (0, 1.5], got {value}")
        return value

    @model_validator(mode="after")
    def _rules(self) -> Campaign:
        _rule(self.eligibility, "campaign.eligibility")
        if self.position_weights and len(self.position_weights) < self.slots:
            raise ValueError(
                f"position_weights has {len(self.position_weights)} weights for {self.slots} slots"
            )
        return self

    def position_weight(self, slot: int) -> float:
        """Response in ``slot`` (1 first) relative to the first slot."""
        return self.position_weights[slot - 1] if self.position_weights else 1.0

    @property
    def mean_position_weight(self) -> float:
        if not self.position_weights:
            return 1.0
        return sum(self.position_weights[: self.slots]) / self.slots


class CampaignFile(_Strict):
    campaign: Campaign
    offers: dict[str, OfferSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _offer_rules(self) -> CampaignFile:
        for offer_id, settings in self.offers.items():
            _rule(settings.eligibility, f"offers.{offer_id}.eligibility")
        return self


def parse_campaign(raw: dict[str, Any], where: str = "campaign") -> CampaignFile:
    """Validate a parsed campaign table; errors name ``where`` and the key."""
    try:
        return CampaignFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(where, exc)) from None


def load_campaign(path: Path) -> CampaignFile:
    """Read and validate a campaign TOML file."""
    return parse_campaign(read_toml(path, "campaign file not found"), str(path))
