"""Ingestion: every bad input gets its pinned message, nothing is lost, loads are idempotent."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.config import IngestConfig
from nextbest.data.ingest import LoadResult, ingest
from nextbest.data.workspace import Workspace

CUSTOMERS = "customer_id,region,consent_email\nc1,north,yes\nc2,south,no\n"
PRODUCTS = "product_id,name,price\np1,shoe,20\n"


def load(ws: Workspace, name: str, text: str | bytes, **kw: object) -> LoadResult:
    path = ws.root / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    (result,) = ingest(ws.warehouse, [path], ws.config.ingest, **kw)  # type: ignore[arg-type]
    return result


BAD_ROWS = [
    # (file, content, expected message of the first problem)
    (
        "customers.csv",
        "customer_id,birth_year\nc9,abc\n",
        "customers.csv line 2: birth_year must be a whole number between 1900 and 2030, got 'abc'",
    ),
    (
        "customers.csv",
        "customer_id,consent_email\nc9,maybe\n",
        "customers.csv line 2: consent_email must be true or false (also 1/0, yes/no), got 'maybe'",
    ),
    (
        "products.csv",
        "product_id,price\np9,-1\n",
        "products.csv line 2: price must be a number >= 0, got '-1'",
    ),
    (
        "events.csv",
        "event_id,customer_id,ts,type\ne1,c1,yesterday,visit\n",
        "events.csv line 2: ts must be an ISO-8601 timestamp with a time zone, e.g. "
        "2024-03-01T12:00:00Z (required), got 'yesterday'",
    ),
    (
        "events.csv",
        "event_id,customer_id,ts,type\ne1,c1,2024-05-01 10:00:00,visit\n",
        "events.csv line 2: ts must be an ISO-8601 timestamp with a time zone, e.g. "
        "2024-03-01T12:00:00Z (required), got '2024-05-01 10:00:00'",
    ),
    (
        "events.csv",
        "event_id,customer_id,ts,type\ne1,c1,2024-05-01T10:00:00Z,teleport\n",
        "events.csv line 2: type must be one of visit, view, click, add_to_cart, purchase, "
        "return, email_sent, email_open, email_click, push_sent, push_open, sms_sent, "
        "store_visit, referral, waitlist, unsubscribe, coupon_redemption (required), "
        "got 'teleport'",
    ),
    (
        "events.csv",
        "event_id,customer_id,ts,type\ne1,ghost,2024-05-01T10:00:00Z,visit\n",
        "events.csv line 2: customer_id must be the id of a known customer (in customers), "
        "got 'ghost'",
    ),
    (
        "events.csv",
        "event_id,customer_id,ts,type,product_id\ne1,c1,2024-05-01T10:00:00Z,view,p404\n",
        "events.csv line 2: product_id must be the id of a known product (in products), got 'p404'",
    ),
    (
        "events.csv",
        "event_id,customer_id,ts,type\n,c1,2024-05-01T10:00:00Z,visit\n",
        "events.csv line 2: event_id must be a text value (required), got an empty value",
    ),
    (
        "customers.csv",
        "customer_id,region\nc7,north\nc8,south\nc7,east\n",
        "customers.csv line 4: customer_id must be a unique customer_id, got 'c7', "
        "already used at line 2",
    ),
    (
        "customers.csv",
        "customer_id,region\nc1,elsewhere\n",
        "customers.csv line 2: customer_id must be a new customer_id, or exactly the values "
        "already loaded, got 'c1', already in the warehouse with other values",
    ),
    (
        "customers.csv",
        "customer_id,region\nc7,north,extra\n",
        "customers.csv line 2: (row) must be 2 fields separated by ',', got 3 fields",
    ),
    (
        "customers.jsonl",
        '{"customer_id": "c7"}\n{"customer_id": \n',
        "customers.jsonl line 2: (row) must be a JSON object, got invalid JSON (Expecting value)",
    ),
    (
        "offers.csv",
        "offer_id,kind,channels\no1,sale,email|fax\n",
        "offers.csv line 2: channels must be one of email, sms, push, web, app, store, phone, "
        "mail (several separated by '|'), got 'email|fax'",
    ),
]


@pytest.fixture
def loaded(workspace: Workspace) -> Workspace:
    assert load(workspace, "customers.csv", CUSTOMERS).tables["customers"].loaded == 2
    assert load(workspace, "products.csv", PRODUCTS).tables["products"].loaded == 1
    return workspace


@pytest.mark.parametrize(("name", "content", "message"), BAD_ROWS)
def test_bad_rows_are_quarantined_with_their_reason(
    loaded: Workspace, name: str, content: str, message: str
) -> None:
    before = loaded.warehouse.counts()
    result = load(loaded, name, content)
    assert result.status == "loaded"
    assert result.problems[0].endswith(message), result.problems
    table = result.tables[next(iter(result.tables))]
    assert table.quarantined >= 1
    assert table.read == table.loaded + table.quarantined + table.skipped
    after = loaded.warehouse.counts()
    assert after["quarantine"] > before["quarantine"]
    row = loaded.warehouse.table("quarantine").to_pyarrow().to_pylist()[-1]
    assert row["source"].endswith(name) and row["line"] is not None


BAD_FILES = [
    ("customers.csv", b"", "customers.csv: the file is empty; expected a header line and rows"),
    ("customers.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR", "customers.csv: this is a binary file"),
    (
        "customers.csv",
        b"customer_id;region\nc7;north\n",
        "customers.csv line 1: found a single column 'customer_id;region'; the file seems to use "
        "semicolon (';') as delimiter, expected ','",
    ),
    (
        "events.csv",
        b"event_id,customer_id,type\ne1,c1,visit\n",
        "events.csv: missing required column(s) ts for table events; found columns: "
        "event_id, customer_id, type",
    ),
    ("stuff.csv", b"a,b\n1,2\n", "stuff.csv: cannot tell the table from the file name"),
    ("customers.parquet", b"PAR1 not really", "customers.parquet: not a readable Parquet file"),
    ("customers.xlsx", b"PK", "customers.xlsx: cannot tell the format from the suffix '.xlsx'"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES)
def test_unreadable_files_fail_alone_with_a_clear_message(
    loaded: Workspace, name: str, content: bytes, message: str
) -> None:
    before = loaded.warehouse.counts()
    good = loaded.root / "customers_more.csv"
    good.write_text("customer_id\nc50\n")
    bad = loaded.root / name
    bad.write_bytes(content)
    results = ingest(loaded.warehouse, [bad, good], loaded.config.ingest)
    assert results[0].status == "failed"
    assert message in results[0].message
    assert results[1].status == "loaded"  # the run goes on with the next file
    after = loaded.warehouse.counts()
    assert after["customers"] == before["customers"] + 1


def test_good_rows_of_a_file_with_bad_rows_still_load(loaded: Workspace) -> None:
    text = (
        "event_id,customer_id,ts,type,amount\n"
        "e1,c1,2024-05-01T10:00:00Z,purchase,10.5\n"
        "e2,c1,2024-05-01T10:00:00Z,purchase,ten\n"
        "e3,c2,2024-05-02T09:00:00+02:00,purchase,4\n"
    )
    result = load(loaded, "events.csv", text)
    counts = result.tables["events"]
    assert (counts.read, counts.loaded, counts.quarantined) == (3, 2, 1)
    rows = loaded.warehouse.table("events").order_by("event_id").to_pyarrow().to_pylist()
    assert [r["event_id"] for r in rows] == ["e1", "e3"]
    assert rows[1]["ts"].hour == 7  # +02:00 converted to UTC
    assert rows[0]["amount"] == 10.5


def test_extra_columns_are_kept_as_attributes(workspace: Workspace) -> None:
    load(workspace, "customers.csv", "customer_id,vip,shoe_size\nc1,yes,38\nc2,,41\n")
    rows = workspace.warehouse.table("customers").order_by("customer_id").to_pyarrow()
    assert rows["attributes"].to_pylist() == [
        '{"vip":"yes","shoe_size":"38"}',
        '{"vip":null,"shoe_size":"41"}',
    ]


def test_line_numbers_are_exact_across_batches_and_blank_lines(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    lines = ["customer_id,birth_year"] + [f"c{i},1980" for i in range(2500)]
    lines[1200] = "c1199,nineteen"
    lines.insert(600, "")
    path = ws.root / "customers.csv"
    path.write_text("\n".join(lines) + "\n")
    config = IngestConfig(batch_rows=100)
    (result,) = ingest(ws.warehouse, [path], config)
    assert result.tables["customers"].loaded == 2499
    assert result.problems == [
        f"{path} line 1202: birth_year must be a whole number between 1900 and 2030, got 'nineteen'"
    ]
    ws.close()


def test_naive_timestamps_load_when_a_default_zone_is_configured(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    (ws.root / "customers.csv").write_text("customer_id,signup_ts\nc1,2024-07-01 12:00:00\n")
    config = IngestConfig(default_timezone="Europe/Paris")
    (result,) = ingest(ws.warehouse, [ws.root / "customers.csv"], config)
    assert result.tables["customers"].loaded == 1
    (ts,) = ws.warehouse.table("customers").signup_ts.to_pyarrow().to_pylist()
    assert ts.hour == 10  # 12:00 in Paris in summer is 10:00 UTC
    ws.close()


def test_loading_the_same_file_twice_adds_nothing(loaded: Workspace) -> None:
    text = "event_id,customer_id,ts,type\ne1,c1,2024-05-01T10:00:00Z,visit\ne2,zz,bad,visit\n"
    first = load(loaded, "events.csv", text)
    before = loaded.warehouse.counts()
    second = load(loaded, "events.csv", text)
    assert first.status == "loaded" and second.status == "already loaded"
    assert "nothing added" in second.message
    assert loaded.warehouse.counts() == before
    # The same rows in another file are recognised by their ids.
    third = load(
        loaded,
        "events_copy.csv",
        "event_id,customer_id,ts,type\ne1,c1,2024-05-01T10:00:00Z,visit\n",
    )
    assert (third.tables["events"].loaded, third.tables["events"].skipped) == (0, 1)
    assert loaded.warehouse.count("events") == 1


def test_a_failure_mid_load_leaves_the_warehouse_as_it_was(
    loaded: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = loaded.warehouse.counts()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    ingest_module = importlib.import_module("nextbest.data.ingest")
    monkeypatch.setattr(ingest_module, "_record_load", boom)
    path = loaded.root / "customers_new.csv"
    path.write_text("customer_id,region\nc3,north\nc4,x,y\n")
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(loaded.warehouse, [path], loaded.config.ingest)
    assert loaded.warehouse.counts() == before
    monkeypatch.undo()
    (result,) = ingest(loaded.warehouse, [path], loaded.config.ingest)
    assert result.status == "loaded" and result.tables["customers"].loaded == 1


_value = st.sampled_from(["c1", "c2", "c3", "", "zz", "1980", "abc", "yes", "no", "2024-01-01"])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rows=st.lists(st.tuples(_value, _value, _value), min_size=0, max_size=12))
def test_property_any_file_twice_changes_nothing(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str, str]]
) -> None:
    ws = Workspace.init(tmp_path_factory.mktemp("prop"))
    text = "customer_id,birth_year,consent_email\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    first = load(ws, "customers.csv", text)
    after_first = ws.warehouse.counts()
    rows_first = ws.warehouse.table("quarantine").drop("ts").to_pyarrow().to_pylist()
    second = load(ws, "customers.csv", text)
    assert ws.warehouse.counts() == after_first
    assert ws.warehouse.table("quarantine").drop("ts").to_pyarrow().to_pylist() == rows_first
    assert second.status == "already loaded"
    counts = first.tables.get("customers")
    if counts is not None:
        assert counts.read == len(rows)
        assert counts.read == counts.loaded + counts.quarantined + counts.skipped
    ws.close()


def test_a_large_parquet_file_loads_every_row(tmp_path: Path) -> None:
    """Regression: 250,000-row Arrow batches once vanished inside a DuckDB transaction."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 300_000
    rng = np.random.default_rng(3)
    ws = Workspace.init(tmp_path / "ws")
    pq.write_table(
        pa.table({"customer_id": [f"C{i}" for i in range(1000)]}), tmp_path / "customers.parquet"
    )
    customer = rng.integers(0, 1000, n)
    customer[12_345] = 5000  # one unknown customer
    pq.write_table(
        pa.table(
            {
                "event_id": [f"E{i}" for i in range(n)],
                "customer_id": [f"C{i}" for i in customer],
                "ts": pa.array(rng.integers(1.7e15, 1.71e15, n), pa.timestamp("us", tz="UTC")),
                "type": rng.choice(["visit", "purchase"], n),
                "amount": rng.random(n),
            }
        ),
        tmp_path / "events.parquet",
        row_group_size=100_000,
    )
    results = ingest(ws.warehouse, [tmp_path], ws.config.ingest)
    counts = results[1].tables["events"]
    assert (counts.read, counts.loaded, counts.quarantined) == (n, n - 1, 1)
    assert results[1].problems == [
        f"{tmp_path / 'events.parquet'} line 12346: customer_id must be the id of a known "
        "customer (in customers), got 'C5000'"
    ]
    assert ws.warehouse.count("events") == n - 1
    ws.close()


def test_a_missing_file_fails_alone(loaded: Workspace) -> None:
    good = loaded.root / "customers_extra.csv"
    good.write_text("customer_id\nc77\n")
    results = ingest(loaded.warehouse, [loaded.root / "nope.csv", good], loaded.config.ingest)
    assert results[0].status == "failed" and results[0].message.endswith(
        "nope.csv: no such file or folder"
    )
    assert results[1].status == "loaded"
