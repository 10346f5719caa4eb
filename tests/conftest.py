"""Shared fixtures: seeded, and session-scoped where they are expensive."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import settings

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace

# Every property test draws the same examples on every run, here and on CI (a test's own
# @settings keep this unless they say otherwise); no example database carries runs over.
settings.register_profile("nextbest", derandomize=True, database=None)
settings.load_profile("nextbest")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip with the reason when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found at {SHARED_DATA} (../shared/data is absent)")
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def cdnow_master(ws: Workspace) -> pd.DataFrame:
    """Load CDNOW master into ``ws`` and return the raw file as pandas reads it, independently."""
    path = shared_data("cdnow", "CDNOW_master.txt")
    ingest(ws.warehouse, [path], ws.config.ingest, fmt="cdnow")
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    raw["ts"] = pd.to_datetime(raw.date, format="%Y%m%d", utc=True)
    raw["customer_id"] = "cdnow-" + raw.customer_id
    return raw


def load_texts(ws: Workspace, files: dict[str, str]) -> Workspace:
    """Write each ``name -> text`` into ``ws`` and ingest them; every row must load."""
    for name, text in files.items():
        (ws.root / name).write_text(text)
    results = ingest(ws.warehouse, [ws.root / n for n in files], ws.config.ingest)
    assert all(r.total("quarantined") == 0 for r in results), [r.problems for r in results]
    return ws


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    yield ws
    ws.close()


@pytest.fixture(scope="session")
def sim_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path]:
    """20,000 simulated members over 28 days (seed 5), loaded; and the simulator's folder."""
    from nextbest.simulate import SimConfig, simulate

    root = tmp_path_factory.mktemp("simws")
    simulate(SimConfig(n_customers=20_000, days=28, seed=5), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
    yield ws, root / "sim"
    ws.close()
