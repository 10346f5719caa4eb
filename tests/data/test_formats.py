"""Dataset readers on small bad files: each problem is quarantined or reported, and pinned."""

from __future__ import annotations

import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace

HILLSTROM_HEADER = (
    "recency,history_segment,history,mens,womens,zip_code,newbie,channel,segment,visit,"
    "conversion,spend\r\n"
)
ROW = '10,"2) $100 - $200",142.44,1,0,Surburban,0,Phone,Womens E-Mail,{v},{c},{s}\r\n'

BAD_ROWS = [
    (
        "hillstrom",
        "h.csv",
        HILLSTROM_HEADER + ROW.format(v=1, c=1, s="29.99") + ROW.format(v="x", c=0, s=0),
        "h.csv line 3: visit must be one of 0, 1, got 'x'",
    ),
    (
        "hillstrom",
        "h.csv",
        HILLSTROM_HEADER + ROW.format(v=1, c=1, s="lots"),
        "h.csv line 2: amount must be a number, got 'lots'",
    ),
    (
        "hillstrom",
        "h.csv",
        HILLSTROM_HEADER + ROW.format(v=0, c=0, s=0).replace("Womens E-Mail", "Kids E-Mail"),
        "h.csv line 2: segment must be one of Mens E-Mail, Womens E-Mail, No E-Mail, "
        "got 'Kids E-Mail'",
    ),
    (
        "cdnow",
        "cd.txt",
        " customer_id  date number_of_cds  dollar_value\n 00001 19970101  1   11.77\n"
        " 00002 19971341  1   12.00\n",
        "cd.txt line 3: ts must be a date as YYYYMMDD, got '19971341'",
    ),
    (
        "cdnow",
        "cd.txt",
        " 00004 0001 19970101  2   29.33\n 00004 19970118\n",
        "cd.txt line 2: (row) must be 4 fields (customer, date, cds, dollars) or 5 (sample), "
        "got '2 fields'",
    ),
    (
        "baskets",
        "shop.dat",
        "1 2 3 \n4 x 6 \n",
        "shop.dat line 2: product_id must be integer item ids separated by spaces, got 'x'",
    ),
    (
        "baskets",
        "shop.csv",
        "milk,bread\n\nbeer\n",
        "shop.csv line 2: (row) must be at least one item, got an empty value",
    ),
]


@pytest.mark.parametrize(("fmt", "name", "content", "message"), BAD_ROWS)
def test_bad_rows_of_datasets_are_quarantined(
    workspace: Workspace, fmt: str, name: str, content: str, message: str
) -> None:
    path = workspace.root / name
    path.write_text(content, newline="")
    (result,) = ingest(workspace.warehouse, [path], workspace.config.ingest, fmt=fmt)
    assert result.status == "loaded", result.message
    assert result.problems[0].endswith(message), result.problems
    assert result.total("loaded") > 0  # the good rows still load
    for counts in result.tables.values():
        assert counts.read == counts.loaded + counts.quarantined + counts.skipped


def test_a_hillstrom_row_with_a_bad_flag_loads_nothing_of_that_customer(
    workspace: Workspace,
) -> None:
    path = workspace.root / "h.csv"
    path.write_text(
        HILLSTROM_HEADER + ROW.format(v=1, c=1, s="29.99") + ROW.format(v="x", c=0, s=0), newline=""
    )
    ingest(workspace.warehouse, [path], workspace.config.ingest, fmt="hillstrom")
    wh = workspace.warehouse
    assert wh.table("customers").customer_id.to_pyarrow().to_pylist() == ["H000001"]
    events = wh.table("events").order_by("event_id").to_pyarrow().to_pylist()
    assert [(e["type"], e["amount"]) for e in events] == [
        ("email_sent", None),
        ("purchase", 29.99),
        ("visit", None),
    ]


BAD_FILES = [
    (
        "obd",
        "men.csv",
        ",timestamp,item_id\n0,2019-11-24 00:03:13+00:00,3\n",
        "item_context.csv is missing beside it",
    ),
    ("completejourney", "cj", None, "campaign_descriptions.csv is missing"),
    ("hillstrom", "h.csv", "a,b\n1,2\n", "missing column segment; this is not the Hillstrom file"),
]


@pytest.mark.parametrize(("fmt", "name", "content", "message"), BAD_FILES)
def test_wrong_dataset_files_fail_with_a_clear_message(
    workspace: Workspace, fmt: str, name: str, content: str | None, message: str
) -> None:
    path = workspace.root / name
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    (result,) = ingest(workspace.warehouse, [path], workspace.config.ingest, fmt=fmt)
    assert result.status == "failed"
    assert message in result.message
    assert workspace.warehouse.count("events") == 0
