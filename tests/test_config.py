"""nextbest.toml: typos are errors that name the key; mappings load a retailer's own layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextbest.config import load_config
from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[warehouse]\nbackend = 'duckdb'\npth = 'x'\n", "unknown key 'warehouse.pth'"),
        ("[ingst]\n", "unknown key 'ingst'"),
        ("[warehouse]\nbackend = 'oracle'\n", "'warehouse.backend': Input should be 'duckdb'"),
        (
            "[ingest]\nbatch_rows = 0\n",
            "'ingest.batch_rows': Input should be greater than or equal to 1 (got 0)",
        ),
        ("[ingest]\ndefault_timezone = 'Mars/Olympus'\n", "unknown time zone 'Mars/Olympus'"),
        ("[warehouse\n", "not valid TOML"),
    ],
)
def test_bad_configuration_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "nextbest.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_a_mapping_loads_a_retailers_own_layout(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    cfg = ws.root / "nextbest.toml"
    cfg.write_text(
        cfg.read_text() + "\n[ingest.mappings.shop_orders]\ntable = 'events'\ndelimiter = ';'\n"
        "columns = { order_no = 'event_id', paid_at = 'ts', total = 'amount' }\n"
        "constants = { type = 'purchase' }\n"
    )
    ws = Workspace.open(ws.root)
    orders = tmp_path / "orders.txt"
    orders.write_text("order_no;paid_at;total;till\nA1;2024-03-01T09:00:00Z;12.5;4\n")
    (result,) = ingest(ws.warehouse, [orders], ws.config.ingest, fmt="shop_orders")
    assert result.status == "loaded", result.message
    (row,) = ws.warehouse.table("events").to_pyarrow().to_pylist()
    assert (row["event_id"], row["type"], row["amount"]) == ("A1", "purchase", 12.5)
    assert row["attributes"] == '{"till":"4"}'
    ws.close()


def test_a_mapping_to_an_unknown_column_is_named(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    cfg = ws.root / "nextbest.toml"
    cfg.write_text(
        cfg.read_text() + "\n[ingest.mappings.m]\ntable = 'events'\n"
        "columns = { paid = 'paid_ts' }\n"
    )
    ws = Workspace.open(ws.root)
    (tmp_path / "o.csv").write_text("paid\n1\n")
    (result,) = ingest(ws.warehouse, [tmp_path / "o.csv"], ws.config.ingest, fmt="m")
    assert result.status == "failed"
    assert "ingest.mappings.m.columns maps 'paid' to 'paid_ts', which is no column of events" in (
        result.message
    )
    ws.close()
