"""The bodies the service reads and writes, as pydantic models (its OpenAPI schema).

Unknown fields are refused, so a typo is a 422 naming the field, not a silent default. Events
follow the warehouse's canonical ``events`` contract (:mod:`nextbest.data.schema`): the same
types, channels and columns, so the batch side takes them in unchanged.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from nextbest.data.schema import CHANNELS, EVENT_TYPES

__all__ = [
    "Channel",
    "Context",
    "DecideRequest",
    "DecideResponse",
    "EventIn",
    "EventType",
    "EventsIn",
    "EventsResult",
    "RankedOffer",
]

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
Channel = Literal[CHANNELS]  # type: ignore[valid-type]
_ID = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _timestamp(value: Any) -> Any:
    """Times are ISO-8601 text (or datetimes from Python callers), never numbers: ``0`` is
    not a moment anyone meant."""
    if value is None or isinstance(value, str | datetime):
        return value
    raise ValueError(
        f"expected an ISO-8601 timestamp with a time zone as text, e.g. "
        f"2026-03-01T12:00:00Z, got {type(value).__name__}"
    )


class EventIn(_Strict):
    """One event in the canonical format; ``event_id`` makes a replay add nothing."""

    event_id: str = _ID
    customer_id: str | None = Field(None, min_length=1, max_length=200)
    ts: AwareDatetime
    type: EventType
    product_id: str | None = Field(None, min_length=1, max_length=200)
    offer_id: str | None = Field(None, min_length=1, max_length=200)
    channel: Channel | None = None
    quantity: int | None = Field(None, ge=-1_000_000, le=1_000_000, strict=True)
    amount: float | None = Field(None, ge=-1e12, le=1e12, strict=True)
    decision_id: str | None = Field(None, min_length=1, max_length=300)
    basket_id: str | None = Field(None, min_length=1, max_length=200)
    attributes: dict[str, Any] | None = None

    _ts_text = field_validator("ts", mode="before")(lambda cls, v: _timestamp(v))

    @field_validator("amount")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class EventsIn(_Strict):
    """A batch of events, written in one transaction: all acknowledged, or none."""

    events: list[EventIn] = Field(min_length=1, max_length=10_000)


class EventsResult(BaseModel):
    accepted: int  # new events, durably written
    duplicates: int  # event ids already stored: a replay adds nothing


class Context(_Strict):
    """What the channel knows at the moment of the request; rules read every field by name."""

    store: str | None = Field(None, max_length=200)
    region: str | None = Field(None, max_length=200)
    weather: str | None = Field(None, max_length=100)
    device: str | None = Field(None, max_length=100)
    time: AwareDatetime | None = None  # default: now

    _time_text = field_validator("time", mode="before")(lambda cls, v: _timestamp(v))
    cart: list[str] = Field(default_factory=list, max_length=500)  # product ids
    page: str | None = Field(None, max_length=500)


class DecideRequest(_Strict):
    customer_id: str = _ID
    channel: Channel
    context: Context = Field(default_factory=Context)
    count: int = Field(3, ge=1, le=20, strict=True)  # offers wanted
    campaign: str | None = Field(None, min_length=1, max_length=200)


class RankedOffer(BaseModel):
    rank: int
    offer_id: str
    name: str | None
    brand: str | None
    category: str | None
    decision_id: str
    score: float  # the value after the batch's shadow prices (what the ranking used)
    value: float  # P(response) x margin - cost, with the campaign's levers
    shadow_cost: float  # the priced budgets and stock this offer uses (batch dual prices)
    probability: float  # under the policy that chose it (exploration included)
    explored: bool
    explanation: str


class DecideResponse(BaseModel):
    request_id: str
    customer_id: str
    channel: str
    campaign: str
    ts: datetime
    arm: str | None
    held_out: bool
    offers: list[RankedOffer]
    reasons: list[str]  # why fewer offers than asked (contact policy, rules, holdout)
    snapshot: str
