"""Seeded simulator runs shared by the simulator tests (session-scoped: each runs once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from nextbest.simulate import SimConfig, SimSummary, simulate


@dataclass
class Run:
    """A run's folder, summary and tables (``truth_<name>`` for the ground truth)."""

    out: Path
    summary: SimSummary
    tables: dict[str, pd.DataFrame]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def load(out: Path, summary: SimSummary) -> Run:
    tables = {
        name: pq.read_table(out / f"{name}.parquet").to_pandas()
        for name in ("customers", "products", "offers", "decisions", "events")
    }
    for name in ("decisions", "emails", "members", "weather"):
        tables[f"truth_{name}"] = pq.read_table(out / "truth" / f"{name}.parquet").to_pandas()
    return Run(out, summary, tables)


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """20,000 members over 30 days with the random policy: the figures the README quotes."""
    out = tmp_path_factory.mktemp("sim") / "out"
    return load(out, simulate(SimConfig(n_customers=20_000, days=30, seed=7), out))


@pytest.fixture(scope="session")
def holdout_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """50,000 members over 30 days, half of the eligible members held out at random each day."""
    out = tmp_path_factory.mktemp("holdout") / "out"
    config = SimConfig(n_customers=50_000, days=30, seed=11, holdout_share=0.5)
    return load(out, simulate(config, out))
