"""Settings of a simulation run, validated; the summary a run returns; the progress interface."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SimConfig", "SimSummary"]


class SimConfig(BaseModel):
    """What to simulate. Same settings and seed, same files, byte for byte.

    Parameters
    ----------
    seed
        Seed of every random draw.
    n_customers
        Members, including those who join during the run (at most 9,999,999: ids are
        ``C`` and seven digits).
    days
        Days simulated from ``start_date`` (at most 999: offer ids are ``S<day:03>-<k:02>``).
    start_date
        First day, UTC.
    sales_per_day
        New sales opening each day at noon UTC (at most 100).
    sale_days
        How long each sale stays open.
    slots_per_email
        Sales featured in each member's daily e-mail.
    n_brands
        Brands, of which ``new_designer_share`` appear during the run (new designers).
    new_member_share
        Share of members who join during the run.
    holdout_share
        Share of eligible members held out of each day's e-mail at random, logged as control
        decisions (no offer, slot 0) so that the effect of the e-mail can be measured.
    file_format
        ``parquet`` (``<table>.parquet``) or ``csv`` (``<table>.csv``); the ground truth is
        always Parquet.
    policy
        Which policy fills the e-mails (see :mod:`nextbest.simulate.policies`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 7
    n_customers: int = Field(20_000, ge=10, le=9_999_999)
    days: int = Field(60, ge=1, le=999)
    start_date: date = date(2026, 1, 1)
    sales_per_day: int = Field(40, ge=3, le=100)
    sale_days: int = Field(2, ge=1, le=30, description="how long each sale stays open")
    slots_per_email: int = Field(3, ge=1)
    n_brands: int = Field(150, ge=5)
    new_designer_share: float = Field(0.2, ge=0, le=1, description="brands that appear mid-run")
    new_member_share: float = Field(0.15, ge=0, le=1, description="members joining mid-run")
    holdout_share: float = Field(0.0, ge=0, lt=1, description="members held out each day")
    file_format: Literal["parquet", "csv"] = "parquet"
    policy: Literal["random", "popular"] = "random"

    @model_validator(mode="after")
    def _slots_fit(self) -> SimConfig:
        if self.slots_per_email > self.sales_per_day:
            raise ValueError(
                f"slots_per_email must be <= sales_per_day ({self.sales_per_day}), "
                f"got {self.slots_per_email}: an e-mail cannot feature more sales than open"
            )
        return self


@dataclass
class SimSummary:
    """What a run wrote and what it measured.

    Attributes
    ----------
    out_dir
        Folder of the tables (the ground truth is in its ``truth`` subfolder).
    rows
        Rows written per table.
    rates
        Observed rates in the written events: ``open_rate``, ``click_rate`` (per e-mail
        sent), ``click_to_open``, ``unsubscribe_rate`` (per e-mail sent), ``visit_conversion``
        (purchases per visit), ``return_share`` (returns per purchase).
    truth
        The same rates expected under the true response probabilities (``expected_...``),
        the share of each treatment-effect type among members (``share_<type>``), and the
        mean true effect of an e-mail on the probability of buying that day, per type
        (``uplift_<type>``) and over all e-mails (``uplift_mean``).
    """

    out_dir: str
    rows: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    truth: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
