"""What a planned day leaves behind: the decision log (fast typed append), slates and summary.

The log of a day's first decision is appended to the warehouse as it is made, not read back
through ingestion; these tests hold it to what ingestion of the same record file gives, and the
rows to an independent build from the plan's arrays, one decision at a time.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextbest.data.append import TypedAppend, file_sha256
from nextbest.data.ingest import _sha256, ingest
from nextbest.data.workspace import Workspace
from nextbest.decide import decide, parse_campaign
from nextbest.decide import output as output_module
from nextbest.decide.output import LOG_SCHEMA, decision_batches, decision_rows, write_outputs
from nextbest.errors import DataError
from nextbest.models import ModelStore, TrainOptions, train
from nextbest.simulate import SimConfig, simulate

DAY = datetime(2026, 1, 9, tzinfo=UTC)  # the day after the 8 simulated ones
CAMPAIGN = {
    "campaign": {
        "name": "mail",
        "slots": 3,
        "budget": 20.0,
        "exploration": {"share": 0.1, "novelty_share": 0.5},
        "experiment": {"name": "mail", "holdout": 0.1, "salt": "t"},
    }
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 simulated members over 8 days, loaded, a propensity model trained; not decided."""
    root = tmp_path_factory.mktemp("output")
    simulate(SimConfig(n_customers=1_500, days=8, seed=3, holdout_share=0.1), root / "sim")
    ws = Workspace.init(root / "ws")
    ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
    options = TrainOptions(holdout_days=2, calibration_days=2)
    train(ws.warehouse, ModelStore(ws.models), "propensity", options)
    ws.close()
    return root / "ws"


def _copy(pristine: Path, to: Path) -> Workspace:
    shutil.copytree(pristine, to)
    return Workspace.open(to)


@pytest.fixture(scope="module")
def logged(pristine: Path, tmp_path_factory: pytest.TempPathFactory):
    """The day decided and logged in a copy of the workspace (the fast typed append)."""
    ws = _copy(pristine, tmp_path_factory.mktemp("logged") / "ws")
    run = decide(ws, parse_campaign(CAMPAIGN), DAY, out=ws.root / "out")
    yield ws, run
    ws.close()


def _day_rows(ws: Workspace) -> pd.DataFrame:
    dec = ws.warehouse.table("decisions")
    rows = dec.filter(dec.decision_id.startswith("mail:20260109:")).to_pyarrow().to_pandas()
    return rows.sort_values("decision_id").reset_index(drop=True)


def test_the_log_equals_what_ingestion_of_its_record_gives(
    pristine: Path, logged, tmp_path: Path
) -> None:
    ws, run = logged
    fast = _day_rows(ws)
    assert run.load.status == "loaded" and run.load.tables["decisions"].loaded == len(fast)
    assert len(fast) == run.summary["slots_filled"] + (fast.slot == 0).sum() > 1_000
    # the ordinary path on an untouched copy: ingest the same record file
    other = _copy(pristine, tmp_path / "ws")
    try:
        slow = ingest(other.warehouse, [run.paths["log"]], other.config.ingest, table="decisions")
        assert slow[0].tables["decisions"].loaded == len(fast)
        assert slow[0].tables["decisions"].quarantined == 0
        ref = _day_rows(other)
        types = other.warehouse.table("decisions").schema()
        assert ws.warehouse.table("decisions").schema() == types
        assert list(fast.columns) == list(ref.columns) == list(types.names)
        for col in fast.columns:
            pd.testing.assert_series_equal(fast[col], ref[col], check_dtype=True, obj=col)
        # the load is recorded as ingestion records it: same content hash, format and counts
        mine = ws.warehouse.table("loads").to_pandas().iloc[-1]
        theirs = other.warehouse.table("loads").to_pandas().iloc[-1]
        for col in ("sha256", "format", "rows_read", "rows_loaded", "rows_skipped", "tables"):
            assert mine[col] == theirs[col], col
        assert mine["sha256"] == _sha256(run.paths["log"]) == file_sha256(run.paths["log"])
        # and ingesting the record again adds nothing, in either warehouse
        for w in (ws, other):
            again = ingest(w.warehouse, [run.paths["log"]], w.config.ingest, table="decisions")
            assert again[0].status == "already loaded"
    finally:
        other.close()
    report = json.loads(Path(run.load.report).read_text())
    assert report["tables"]["decisions"]["loaded"] == len(fast)
    assert report["quarantine_by_field"] == []


def test_rows_equal_an_independent_build_from_the_plan(logged) -> None:
    ws, run = logged
    plan = run.plan
    got = _day_rows(ws).set_index("decision_id")
    ids = plan.inputs.customer_ids
    offers = list(plan.inputs.offers.offer_id)
    shadow_prices = plan.problem.prices(plan.allocation.duals)
    expected = {}
    for i, k in zip(*np.nonzero(plan.slates >= 0), strict=True):
        o = int(plan.slates[i, k])
        shadow = plan.problem.shadow_cost(shadow_prices, np.array([i]), np.array([o]))[0]
        parts = {
            "p_response": round(float(plan.inputs.p_response[i, o]), 6),
            "p_buy": round(float(plan.parts["p_buy"][i, o]), 6),
            "gross": round(float(plan.parts["gross"][i, o]), 6),
            "cost": round(float(plan.parts["cost"][i, o]), 6),
            "lever": round(float(plan.parts["lever"][i, o]), 4),
            "value": round(float(plan.problem.value[i, o]), 6),
            "shadow_cost": round(float(shadow), 6),
            "explored": bool(plan.explored[i, k]),
            "novel": bool(plan.novel[i, k]),
        }
        key = f"mail:20260109:{ids[i]}:{k + 1}"
        expected[key] = (ids[i], offers[o], k + 1, float(plan.propensity[i, k]), parts)
    held = plan.inputs.holdout & plan.inputs.eligible.any(axis=1)
    assert held.sum() > 10
    for i in np.flatnonzero(held):
        expected[f"mail:20260109:{ids[i]}:0"] = (ids[i], None, 0, 0.1, None)
    assert set(got.index) == set(expected)
    for key, (customer, offer, slot, propensity, parts) in expected.items():
        row = got.loc[key]
        assert (row.customer_id, row.slot) == (customer, slot), key
        assert row.propensity == pytest.approx(propensity, abs=1e-12), key
        assert row.channel == "email" and row.experiment == "mail" and pd.isna(row.attributes)
        assert row.ts == pd.Timestamp(plan.inputs.send_ts)
        if offer is None:
            assert pd.isna(row.offer_id) and pd.isna(row.score) and pd.isna(row.score_parts)
            assert (row.policy, row.arm) == ("mail/holdout", "holdout")
        else:
            assert row.offer_id == offer and json.loads(row.score_parts) == parts, key
            assert row.policy == f"mail/{plan.allocation.info['solver']}"
            assert row.arm == plan.inputs.arm[ids.tolist().index(customer)]


def test_blocks_and_formats_do_not_change_the_rows(logged, tmp_path: Path) -> None:
    ws, run = logged
    plan, spec = run.plan, parse_campaign(CAMPAIGN)
    whole = pa.Table.from_batches(list(decision_batches(plan, spec, DAY)), schema=LOG_SCHEMA)
    small = pa.Table.from_batches(list(decision_batches(plan, spec, DAY, block=7)))
    assert small.equals(whole) and whole.num_rows == len(_day_rows(ws))
    assert decision_rows(plan, spec, DAY).equals(whole.to_pandas())
    # slates: the CSV the run wrote, a Parquet written in blocks of 7, and the plan, agree
    csv = pd.read_csv(run.paths["slates"], keep_default_na=False, na_values=[""])
    paths = write_outputs(plan, spec, DAY, tmp_path, run.summary, "parquet", block=7)
    parquet = pd.read_parquet(paths["slates"])
    assert list(csv.columns) == list(parquet.columns) == list(output_module.SLATE_SCHEMA.names)
    pd.testing.assert_frame_equal(csv, parquet, check_dtype=False)
    rows, cols = np.nonzero(plan.slates >= 0)
    offers = plan.inputs.offers.offer_id.to_numpy()
    assert (csv.customer_id.to_numpy() == plan.inputs.customer_ids[rows]).all()
    assert (csv.offer_id.to_numpy() == offers[plan.slates[rows, cols]]).all()
    assert (csv.slot.to_numpy() == cols + 1).all()
    assert (csv.explored.to_numpy() == plan.explored[rows, cols]).all()
    assert json.loads(paths["summary"].read_text()) == json.loads(run.paths["summary"].read_text())


def test_a_failed_log_leaves_the_warehouse_and_the_record_as_they_were(
    pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = _copy(pristine, tmp_path / "ws")
    try:
        before = ws.warehouse.counts()
        real = output_module._Day.control

        def broken(self, held):  # the control rows come last: the sent ones are in by then
            raise OSError("disk full")

        monkeypatch.setattr(output_module._Day, "control", broken)
        with pytest.raises(Exception, match="disk full"):
            decide(ws, parse_campaign(CAMPAIGN), DAY, out=ws.root / "out")
        assert ws.warehouse.counts() == before
        assert not list((ws.root / "decisions" / "log").glob("*.parquet"))
        monkeypatch.setattr(output_module._Day, "control", real)
        run = decide(ws, parse_campaign(CAMPAIGN), DAY, out=ws.root / "out")
        assert run.load.status == "loaded" and ws.warehouse.count("decisions") > before["decisions"]
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("column", "array", "message"),
    [
        ("slot", pa.array([1], pa.int32()), "column decisions.slot must be int64, got int32"),
        ("score", pa.array(["x"]), "column decisions.score must be double, got string"),
        ("colour", pa.array(["red"]), "column 'colour' is no column of decisions; expected"),
    ],
)
def test_the_typed_append_refuses_other_types_and_changes_nothing(
    workspace: Workspace, tmp_path: Path, column: str, array: pa.Array, message: str
) -> None:
    ok = pa.record_batch({"decision_id": pa.array(["d1"])})
    bad = pa.record_batch({"decision_id": pa.array(["d2"]), column: array})
    path = tmp_path / "decisions-x.parquet"
    pq.write_table(pa.Table.from_batches([ok]), path)
    with pytest.raises(DataError) as info, TypedAppend(workspace.warehouse, "decisions", path) as a:
        a.insert(ok.schema, [ok])
        a.insert(bad.schema, [bad])
    assert f"{path}: {message}" in str(info.value)
    assert workspace.warehouse.count("decisions") == 0 and workspace.warehouse.count("loads") == 0
