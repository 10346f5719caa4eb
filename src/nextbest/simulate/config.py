"""Settings of a simulation run, validated, and the summary a run returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SimConfig", "SimSummary"]


class SimConfig(BaseModel):
    """What to simulate. Same settings and seed, same files, byte for byte."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 7
    n_customers: int = Field(20_000, ge=10)
    days: int = Field(60, ge=1)
    start_date: date = date(2026, 1, 1)
    sales_per_day: int = Field(40, ge=3)
    sale_days: int = Field(2, ge=1, description="how long each sale stays open")
    slots_per_email: int = Field(3, ge=1)
    n_brands: int = Field(150, ge=5)
    new_designer_share: float = Field(0.2, ge=0, le=1, description="brands that appear mid-run")
    new_member_share: float = Field(0.15, ge=0, le=1, description="members joining mid-run")
    file_format: Literal["parquet", "csv"] = "parquet"
    policy: Literal["random", "popular"] = "random"


@dataclass
class SimSummary:
    """Rows written per table, and the true aggregate rates of the run."""

    out_dir: str
    rows: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
