"""Erasure: no table, log, slate, outbox or report names the customer afterwards, the others'
rows are untouched, and reloading the retailer's files does not bring the customer back."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextbest.data.erase import erase_customer, mentions, redact_json
from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.decide import decide, parse_campaign
from nextbest.errors import DataError
from nextbest.models import ModelStore, TrainOptions, train
from nextbest.simulate import SimConfig, simulate

DAY = datetime(2026, 1, 6, tzinfo=UTC)  # the day after the 5 simulated ones
CAMPAIGN = {"campaign": {"name": "daily", "slots": 2, "budget": 30.0}}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def traces(ws: Workspace, ids: list[str]) -> list[str]:
    """Every table column and workspace file that names one of ``ids`` as a whole token."""
    pattern = f"(^|[^0-9A-Za-z])({'|'.join(map(re.escape, ids))})([^0-9A-Za-z]|$)"
    found = []
    raw = ws.warehouse.con.con  # the tables in the file (not in-memory views of this process)
    stored = raw.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()
    for (name,) in stored:
        t = ws.warehouse.table(name)
        for col, dtype in t.schema().items():
            if dtype.is_string():
                n = int(t.filter(t[col].re_search(pattern)).count().execute())
                if n:
                    found.append(f"{name}.{col}: {n} rows")
    for path in sorted(ws.root.rglob("*")):
        if not path.is_file() or path.name.startswith("warehouse.duckdb") or ".tmp" in path.parts:
            continue
        if path.suffix == ".parquet":
            text = pq.read_table(path).to_pandas().to_csv()
        else:
            text = path.read_text(encoding="utf-8", errors="ignore")
        if re.search(pattern, text):
            found.append(str(path.relative_to(ws.root)))
    return found


def per_customer(ws: Workspace, table: str) -> pd.Series:
    t = ws.warehouse.table(table)
    frame = t.group_by("customer_id").aggregate(n=t.count()).to_pandas()
    return frame.set_index("customer_id").n.sort_index()


def events_frame(rows: list[dict[str, object]]) -> pa.Table:
    """Events as the service's outbox writes them (canonical columns)."""
    cols = ["event_id", "customer_id", "ts", "type", "offer_id", "channel", "decision_id"]
    return pa.table(
        {c: pa.array([r.get(c) for r in rows], pa.string()) for c in cols if c != "ts"}
        | {"ts": pa.array([r["ts"] for r in rows], pa.timestamp("us", tz="UTC"))}
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """300 simulated members over 5 days, a decided day (log, CSV and Parquet slates), a sync
    outbox file and quarantined rows; then two customers erased: a referrer and a referee."""
    root = tmp_path_factory.mktemp("erase")
    simulate(SimConfig(n_customers=300, days=5, seed=3), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest, reports=ws.reports)
    options = TrainOptions(holdout_days=1, calibration_days=1, uplift_window_days=1)
    train(ws.warehouse, ModelStore(ws.models), "propensity", options)
    spec = parse_campaign(CAMPAIGN)
    decide(ws, spec, DAY)
    decide(ws, spec, DAY, fmt="parquet", log_decisions=False)
    wh = ws.warehouse
    customers = wh.table("customers").to_pandas()
    referrer = customers.referred_by.value_counts().index[0]  # named in others' referred_by
    events = wh.table("events").to_pandas()
    referral = events[events.attributes.fillna("").str.contains('"referred"')]
    referee = next(
        json.loads(a)["referred"]
        for c, a in zip(referral.customer_id, referral.attributes, strict=True)
        if c != referrer
    )
    gone = [referrer, referee]
    other = "C0000010"
    outbox = ws.root / "serving" / "outbox"
    outbox.mkdir(parents=True)
    live = [
        {"event_id": "live-1", "customer_id": referrer, "ts": DAY, "type": "visit"},
        {"event_id": "live-2", "customer_id": referrer, "ts": DAY, "type": "view"},
        {"event_id": "live-3", "customer_id": other, "ts": DAY, "type": "visit"},
    ]
    pq.write_table(events_frame(live), outbox / "events-000000000001-000000000003.parquet")
    ingest(wh, sorted(outbox.glob("*.parquet")), ws.config.ingest, table="events")
    bad = root / "events-bad.csv"
    bad.write_text(
        "event_id,customer_id,ts,type,product_id\n"
        f"bad-1,{referrer},2026-01-05T10:00:00Z,bogus,\n"  # rejected by validation
        f"bad-2,{referrer},2026-01-05T10:00:00Z,view,P-nowhere\n"  # an unknown product
        f"bad-3,{other},2026-01-05T10:00:00Z,bogus,\n",
        encoding="utf-8",
    )
    ingest(wh, [bad], ws.config.ingest, reports=ws.reports)
    changed = root / "customers-changed.csv"  # a conflict: its report quotes the id
    changed.write_text(f"customer_id,region\n{referrer},elsewhere\n", encoding="utf-8")
    ingest(wh, [changed], ws.config.ingest, reports=ws.reports)
    dec = wh.table("decisions").to_pandas()
    events = wh.table("events").to_pandas()  # with the outbox's
    log = ws.root / "decisions" / "log" / "decisions-daily-2026-01-06.parquet"
    slates = ws.root / "decisions" / "slates-daily-2026-01-06.csv"
    before = {
        "events": per_customer(ws, "events"),
        "decisions": per_customer(ws, "decisions"),
        "customers": customers.set_index("customer_id").sort_index(),
        "quarantine": wh.count("quarantine"),
        "log": pq.read_table(log).to_pandas(),
        "slates": pd.read_csv(slates),
    }
    own = {
        c: {
            "events": int(
                (
                    (events.customer_id == c)
                    | events.decision_id.isin(dec.decision_id[dec.customer_id == c])
                ).sum()
            ),
            "decisions": int((dec.customer_id == c).sum()),
            "referred_by": int((customers.referred_by == c).sum()),
            "attributes": int(referral.attributes.str.contains(f'"{c}"').sum()),
        }
        for c in gone
    }
    assert before["log"].customer_id.isin([referrer]).any() and own[referrer]["referred_by"] >= 2
    assert traces(ws, gone)  # they are everywhere before
    counts = {c: erase_customer(ws, c) for c in gone}
    yield {
        "ws": ws,
        "sim": root / "sim",
        "gone": gone,
        "other": other,
        "own": own,
        "before": before,
        "counts": counts,
        "log": log,
        "slates": slates,
        "root": root,
    }
    ws.close()


def test_erasure_counts_what_it_removed(shop: dict) -> None:
    referrer, referee = shop["gone"]
    for c in shop["gone"]:
        got, own = shop["counts"][c], shop["own"][c]
        assert got["customers"] == 1
        for key in ("events", "decisions", "referred_by", "attributes"):
            assert got[key] == own[key], (c, key)
    log_rows = int((shop["before"]["log"].customer_id == referrer).sum())
    slate_rows = int((shop["before"]["slates"].customer_id == referrer).sum())
    # the bad type, the unknown product and the conflicting customers row
    assert shop["counts"][referrer]["quarantine"] == 3
    assert shop["counts"][referrer]["files"] == 4  # log, CSV and Parquet slates, outbox
    assert shop["counts"][referrer]["file_rows"] == log_rows + 2 * slate_rows + 2
    assert shop["counts"][referrer]["reports"] == 1
    ws = shop["ws"]
    er = ws.warehouse.table("erasures").to_pandas()
    assert list(er.id_sha256) == [sha(referrer), sha(referee)]
    assert [json.loads(c) for c in er.counts] == [shop["counts"][referrer], shop["counts"][referee]]


def test_no_table_or_file_names_them_and_the_others_are_untouched(shop: dict) -> None:
    ws, gone, before = shop["ws"], shop["gone"], shop["before"]
    assert traces(ws, gone) == []
    for table in ("events", "decisions"):
        now = per_customer(ws, table)
        assert now.drop(gone, errors="ignore").equals(before[table].drop(gone, errors="ignore"))
    customers = ws.warehouse.table("customers").to_pandas().set_index("customer_id").sort_index()
    kept = before["customers"].drop(gone)
    assert customers.drop(columns="referred_by").equals(kept.drop(columns="referred_by"))
    named = kept.referred_by.isin(gone)
    assert customers.referred_by[named].isna().all() and named.sum() == sum(
        shop["own"][c]["referred_by"] for c in gone
    )
    assert customers.referred_by[~named].equals(kept.referred_by[~named])
    assert ws.warehouse.count("quarantine") == before["quarantine"] - 3
    log = pq.read_table(shop["log"]).to_pandas()
    assert log.reset_index(drop=True).equals(
        before["log"][~before["log"].customer_id.isin(gone)].reset_index(drop=True)
    )
    slates = pd.read_csv(shop["slates"])
    assert len(slates) == (~before["slates"].customer_id.isin(gone)).sum()
    report = [json.loads(p.read_text()) for p in ws.reports.glob("*.json")]
    problems = [m for r in report for m in r.get("problems", [])]
    assert any("bad-3" in m or "line 4" in m for m in problems)  # the other customer's row stays


def test_erasing_again_removes_nothing(shop: dict) -> None:
    again = erase_customer(shop["ws"], shop["gone"][0])
    assert all(v == 0 for v in again.values()), again
    with pytest.raises(DataError, match="expected a customer id"):
        erase_customer(shop["ws"], "")


def test_reloading_the_retailers_files_keeps_them_out(shop: dict) -> None:
    ws, gone, sim = shop["ws"], shop["gone"], shop["sim"]
    same = ingest(ws.warehouse, [sim], ws.config.ingest)
    assert {r.status for r in same} == {"already loaded"}
    # The retailer exports the same rows again: other bytes, so the digests do not match.
    again = shop["root"] / "reexport"
    again.mkdir()
    for path in sorted(sim.glob("*.parquet")):
        pq.write_table(pq.read_table(path), again / path.name, row_group_size=700)
    quarantine = ws.warehouse.count("quarantine")
    loads = {
        r.format + ":" + next(iter(r.tables)): r
        for r in ingest(ws.warehouse, [again], ws.config.ingest)
    }
    withheld = 0
    for path in sorted(sim.glob("*.parquet")):
        table = path.stem
        source = pq.read_table(path).to_pandas()
        theirs = int(source.customer_id.isin(gone).sum()) if "customer_id" in source else 0
        counts = loads[f"parquet:{table}"].tables[table]
        assert (counts.loaded, counts.quarantined) == (0, theirs), table
        assert counts.skipped == len(source) - theirs, table  # blanked references compare equal
        withheld += theirs
    assert ws.warehouse.count("quarantine") == quarantine + withheld
    q = ws.warehouse.table("quarantine").to_pandas().tail(withheld)
    assert (
        set(q.row) == {""} and q.received.str.match(r"a customer erased on \d{4}-\d\d-\d\d").all()
    )
    log = ingest(ws.warehouse, [shop["log"]], ws.config.ingest, table="decisions")[0]
    assert (log.status, log.tables["decisions"].loaded) == ("loaded", 0)  # rewritten: new digest
    late = shop["root"] / "events-late.csv"
    late.write_text(
        "event_id,customer_id,ts,type,friend\n"
        f"late-1,{gone[0]},2026-01-05T10:00:00Z,visit,\n"
        f"late-2,{gone[0]},not a time,visit,\n"
        f"late-3,{shop['other']},2026-01-05T10:00:00Z,referral,{gone[1]}\n",
        encoding="utf-8",
    )
    [result] = ingest(ws.warehouse, [late], ws.config.ingest, reports=ws.reports)
    assert (result.tables["events"].loaded, result.tables["events"].quarantined) == (1, 2)
    ev = ws.warehouse.table("events")
    attrs = ev.filter(ev.event_id == "late-3").attributes.execute().iloc[0]
    assert json.loads(attrs) == {"friend": None}
    assert traces(ws, gone) == []


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("daily:20260106:C1:1", True),
        ("'C1', already used at line 5", True),
        ('{"customer_id": "C1", "amount": 3}', True),
        ('{"attributes": "{\\"referred\\":\\"C1\\"}"}', True),
        ("C10", False),
        ('{"customer_id": "C10"}', False),
        ("", False),
    ],
)
def test_mentions_match_whole_ids_only(text: str, named: bool) -> None:
    assert (mentions(text, {sha("C1")}) is not None) is named


def test_redaction_nulls_values_and_drops_keys() -> None:
    erased = {sha("C1")}
    assert redact_json('{"referred":"C1","n":2}', erased) == '{"referred":null,"n":2}'
    assert redact_json('{"C1":"x","list":["C1","C2"]}', erased) == '{"list":[null,"C2"]}'
    assert redact_json('{"referred":"C12"}', erased) == '{"referred":"C12"}'
    assert redact_json("not json C1", erased) == "not json C1"
    assert redact_json(None, erased) is None
