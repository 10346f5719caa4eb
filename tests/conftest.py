"""Shared fixtures: seeded, and session-scoped where they are expensive."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace

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


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    yield ws
    ws.close()
