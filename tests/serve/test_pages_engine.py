"""The engine pages (models, decisions, experiments, closed loop, customer) against their sources.

Every number a page draws is checked against where it comes from: the model store's
manifests, the decision summary and the decision log (counted with pandas), the experiment
analysis and campaign ROI of nextbest.measure, a closed-loop result written by run_loop, the
snapshot's arrays and nextbest.decide.explain. What the pages add (a copy of the workspace
with an uplift model, a campaign hypothesis and a loop result) is written to a copy.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nextbest.data.workspace import Workspace
from nextbest.decide import explain, load_campaign
from nextbest.features import experiment_frame
from nextbest.measure import LoopConfig, analyze_experiment, campaign_roi, run_loop
from nextbest.measure.loop import LoopResult, save_loop_result
from nextbest.models import ModelStore, TLearner, qini_curve
from nextbest.serve.app import Service
from nextbest.serve.dashboard import (
    Block,
    Chart,
    Filters,
    Metrics,
    Note,
    PageContext,
    Table,
    build_blocks,
    load_pages,
    read_warehouse,
)
from nextbest.serve.snapshot import Snapshot, current_snapshot
from tests.serve.conftest import DAY, Shop

PAGES = load_pages()  # the dashboard's own order: the insight pages, then these
ENGINE = ["models", "decisions", "experiments", "loop", "customer"]
UPLIFT_FROM = datetime(2026, 1, 8, tzinfo=UTC)  # the uplift model's days: the shop's last 3
HYPOTHESIS = """
[campaign]
name = "{name}"

[campaign.experiment]
name = "daily_holdout"
holdout = {holdout}
arms = {{ mailed = 1.0 }}

[campaign.hypothesis]
metric = "conversion"
expected_lift = 0.2
expected_value = 50
"""


@dataclass
class Copy:
    root: Path
    loop: LoopResult
    service: Service
    uplift_frame: pd.DataFrame  # the assignments the uplift model learned from


def _uplift_model(ws: Workspace) -> pd.DataFrame:
    """A small T-learner on the experiment's last days, stored as training stores one."""
    frame = experiment_frame(ws.warehouse, "daily_holdout", window_days=14.0, start=UPLIFT_FROM)
    cols = [c for c in frame.columns if c not in ("customer_id", "ts", "day", "arm", "y")]
    model = TLearner(control="holdout", random_state=0)
    model.fit(frame[cols], frame.arm.to_numpy(), frame.y.to_numpy())
    ModelStore(ws.models).save(
        "uplift",
        model,
        window={"assignments": "2026-01-08..2026-01-10", "held_out": "30% of customers"},
        features={c: "numeric" for c in cols},
        metrics={"rows": len(frame)},
        data_hash="test",
        params={
            "experiment": "daily_holdout",
            "control": "holdout",
            "treatments": ["mailed"],
            "outcome": "purchase",
            "window_days": 14.0,
        },
    )
    return frame


@pytest.fixture(scope="module")
def copy(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Copy:
    base = tmp_path_factory.mktemp("engine")
    root = base / "ws"
    shutil.copytree(shop.root, root)
    ws = Workspace.open(root)
    frame = _uplift_model(ws)
    ws.close()
    for name, holdout in (("hypothesis", 0.1), ("skewed", 0.4)):
        text = HYPOTHESIS.format(name=name, holdout=holdout)
        (root / "campaigns" / f"{name}.toml").write_text(text, encoding="utf-8")
    loop = run_loop(LoopConfig(days=3, policies=("random", "popular"), customers=200, seed=1))
    save_loop_result(loop, root)
    return Copy(root, loop, Service(root, base / "online.db"), frame)  # its db outside


def page_of(root: Path, slug: str, service: Any = None, **filters: Any) -> list[Block]:
    blocks = build_blocks(slug, PageContext(root, Filters(**filters), service))
    warnings = [b.text for b in blocks if isinstance(b, Note) and b.kind == "warning"]
    assert not warnings, warnings
    for b in blocks:
        if isinstance(b, Chart):
            assert b.figure.data and all(len(t.y) > 0 for t in b.figure.data), b.title
            b.figure.to_json()  # renders
    return blocks


def chart(blocks: list[Block], title: str) -> Chart:
    found = [b for b in blocks if isinstance(b, Chart) and b.title.startswith(title)]
    assert found, f"no chart {title!r} in {[getattr(b, 'title', b) for b in blocks]}"
    return found[0]


def table(blocks: list[Block], title: str) -> Table:
    found = [b for b in blocks if isinstance(b, Table) and b.title.startswith(title)]
    assert found, f"no table {title!r} in {[getattr(b, 'title', b) for b in blocks]}"
    return found[0]


def trace(c: Chart, name: str) -> Any:
    return next(t for t in c.figure.data if t.name == name)


def notes(blocks: list[Block]) -> list[str]:
    return [b.text for b in blocks if isinstance(b, Note)]


def test_the_engine_pages_are_registered_in_order() -> None:
    slugs = list(PAGES)
    assert [s for s in slugs if s in ENGINE] == ENGINE
    assert slugs[-len(ENGINE) :] == ENGINE


def test_models_page_draws_the_manifests_calibration_qini_and_lifetime_values(
    copy: Copy,
) -> None:
    blocks = page_of(copy.root, "models", copy.service)
    store = ModelStore(copy.root / "models")
    for kind in ("propensity", "uplift"):
        versions = [m for m in store.list() if m.kind == kind]
        t = table(blocks, f"{kind}: metrics per version")
        names = t.columns[2:]
        assert set(names) == set(versions[-1].metrics)
        for row, m in zip(t.rows, versions, strict=True):
            assert row[0] == f"v{m.version}"
            assert dict(zip(names, row[2:], strict=True)) == m.metrics
    auc = chart(blocks, "propensity: auc per version").figure.data[0]
    assert list(auc.y) == [m.metrics["auc"] for m in store.list() if m.kind == "propensity"]
    bins = store.manifest("propensity").params["calibration_table"]
    cal = chart(blocks, "Calibration of propensity").figure.data[0]
    assert list(cal.x) == bins["predicted"] and list(cal.y) == bins["observed"]
    # the Qini curve: the model's held-out customers (a hash split), scored and ranked
    uplift, manifest = store.load("uplift")
    frame = copy.uplift_frame
    test = frame[(pd.util.hash_pandas_object(frame.customer_id, index=False) % 10 >= 7).values]
    score = uplift.predict_effect(test[list(manifest.features)])[:, 0]
    treated = (test.arm == "mailed").astype(int).to_numpy()
    x, q = qini_curve(test.y.to_numpy(), treated, score)
    drawn = trace(chart(blocks, "Qini curves"), "mailed: uplift v1")
    index = np.searchsorted(x, np.asarray(drawn.x))
    assert np.allclose(x[index], drawn.x) and np.allclose(q[index], drawn.y)
    assert (drawn.x[0], drawn.x[-1], drawn.y[-1]) == (0.0, 1.0, pytest.approx(q[-1]))
    # lifetime value: the snapshot's, binned
    snap = Snapshot(current_snapshot(copy.root))
    ltv = np.asarray(snap.profile_num[:, snap.meta["numeric"].index("lifetime_value")])
    ltv = ltv[np.isfinite(ltv)]
    bars = chart(blocks, "Lifetime value").figure.data[0]
    assert sum(bars.y) == len(ltv) > 0
    counts, _ = np.histogram(ltv, bins=len(bars.y))
    assert list(bars.y) == counts.tolist()


def test_models_page_without_a_snapshot_fits_lifetime_value_and_reads_stored_qini(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No snapshot (a report of a workspace never served): BG/NBD and Gamma-Gamma are fitted on
    the purchases up to the last day with one (fit_clv itself is tested in tests/models; here
    it is replaced by a recorder, as its fit on this 10-day shop takes seconds). An uplift
    model whose manifest keeps its Qini curves is drawn from them."""
    root = tmp_path / "ws"
    shutil.copytree(shop.root, root, ignore=shutil.ignore_patterns("serving", "*.duckdb.wal"))
    curves = {"mailed": {"x": [0.0, 0.5, 1.0], "qini": [0.0, 0.004, 0.003]}}
    ModelStore(root / "models").save(
        "uplift",
        None,
        window={},
        features={},
        metrics={"mailed: qini": 0.001},
        data_hash="-",
        params={"qini_curves": curves, "experiment": "daily_holdout", "outcome": "purchase"},
    )
    calls = []

    def fake_fit_clv(warehouse: Any, end: Any, horizon_weeks: int) -> Any:
        calls.append((pd.Timestamp(end), horizon_weeks))
        return SimpleNamespace(customers=pd.DataFrame({"clv": [1.0, 2.0, 2.5, np.nan, 9.0]}))

    monkeypatch.setattr("nextbest.serve.pages_engine.fit_clv", fake_fit_clv)
    blocks = page_of(root, "models")
    qini = trace(chart(blocks, "Qini curves of uplift v1"), "mailed: uplift v1")
    assert (list(qini.x), list(qini.y)) == (curves["mailed"]["x"], curves["mailed"]["qini"])
    with read_warehouse(root) as wh:
        ev = wh.table("events").to_pandas()
    last = ev[(ev.type == "purchase") & ev.customer_id.notna()].ts.max().floor("D")
    assert calls == [(last, 52)]
    bars = chart(blocks, "Lifetime value")
    assert f"fitted up to {last:%Y-%m-%d}" in bars.note and "4 customers" in bars.note
    assert sum(bars.figure.data[0].y) == 4  # the missing value left out


def _logged_counts(root: Path, campaign: str, day: date) -> dict[str, int]:
    with read_warehouse(root) as wh:
        dec = wh.table("decisions").to_pandas()
    mine = dec[dec.decision_id.str.startswith(f"{campaign}:{day:%Y%m%d}:") & dec.offer_id.notna()]
    return {str(k): int(v) for k, v in mine.offer_id.value_counts().items()}


def test_decisions_page_draws_the_summary_and_the_log(shop: Shop) -> None:
    blocks = page_of(shop.root, "decisions")  # the latest summary: the e-mail, decided last
    summary = json.loads(
        (shop.root / "decisions" / "summary-daily-email-2026-01-11.json").read_text()
    )
    tiles = next(b for b in blocks if isinstance(b, Metrics))
    assert tiles.title == "daily-email on 2026-01-11"
    assert tiles.items["Novelty share"][0] == f"{100 * summary['novel_share']:.1f}%"
    assert tiles.items["Solver gap"][0] == f"{100 * summary['solver']['gap']:.1f}%"
    sent = {o["offer_id"]: o["sent"] for o in summary["offers"]}
    logged = _logged_counts(shop.root, "daily-email", DAY.date())
    assert sum(sent.values()) == summary["slots_filled"] == sum(logged.values()) > 0
    offers = table(blocks, "Offers")
    assert {r[0]: r[2] for r in offers.rows} == sent
    assert (
        {r[0]: r[3] for r in offers.rows if r[3]} == logged == {k: v for k, v in sent.items() if v}
    )
    bars = chart(blocks, "Allocation per offer")
    assert dict(zip(trace(bars, "sent").x, trace(bars, "sent").y, strict=True)) == sent
    units = {o["offer_id"]: o["expected_units"] for o in summary["offers"]}
    got = trace(bars, "expected units")
    assert dict(zip(got.x, got.y, strict=True)) == units
    prices = chart(blocks, "Shadow prices").figure.data[0]
    want = {c["label"]: c["shadow_price"] for c in summary["constraints"]}
    assert dict(zip(prices.x, prices.y, strict=True)) == want
    scarce = next(c for c in summary["constraints"] if c["name"] == f"stock[{shop.scarce}]")
    assert scarce["shadow_price"] > 0  # the stock the fixture cut binds, and shows
    use = chart(blocks, "Constraint use")
    assert list(trace(use, "used").y) == [c["used"] for c in summary["constraints"]]
    assert list(trace(use, "bound").y) == [c["bound"] for c in summary["constraints"]]
    assert "daily-email: 2026-01-11" in notes(blocks)[-1] and "dry: 2026-01-11" in notes(blocks)[-1]
    # a preview (decided with no log) says so; an unknown campaign warns
    dry = page_of(shop.root, "decisions", campaign="dry", day=DAY.date())
    assert all(r[3] == 0 for r in table(dry, "Offers").rows)
    assert any("--no-log" in (b.note or "") for b in dry if isinstance(b, Table))
    unknown = build_blocks("decisions", PageContext(shop.root, Filters(campaign="nope")))
    assert [b.kind for b in unknown] == ["warning"]


def test_experiments_page_draws_the_analysis_and_the_roi(copy: Copy) -> None:
    blocks = page_of(copy.root, "experiments", campaign="hypothesis")
    with read_warehouse(copy.root) as wh:
        a = analyze_experiment(wh, "daily_holdout")
        roi = campaign_roi(wh, load_campaign(copy.root / "campaigns" / "hypothesis.toml"))
    rates = chart(blocks, "daily_holdout: rate per arm")
    for arm in a.arms:
        bar = trace(rates, arm)
        for metric, value, plus, minus in zip(
            bar.x, bar.y, bar.error_y.array, bar.error_y.arrayminus, strict=True
        ):
            e = a.metric(metric).arm(arm).estimate
            assert a.metric(metric).binary
            assert (value, value + plus, value - minus) == pytest.approx((e.value, e.high, e.low))
    rows = table(blocks, "daily_holdout: arms").rows
    assert len(rows) == sum(len(m.arms) for m in a.metrics)
    for metric, arm, n, value, low, high, lift, _, _ in rows:
        r = a.metric(metric).arm(arm)
        assert (n, value, low, high) == (r.n, r.estimate.value, r.estimate.low, r.estimate.high)
        if arm != a.control:
            assert lift == a.metric(metric).comparison(arm).lift.absolute.value
    lifts = trace(chart(blocks, "daily_holdout: lift"), "mailed vs holdout")
    want = {m.metric: m.comparison("mailed").lift.relative.value for m in a.metrics}
    assert dict(zip(lifts.x, lifts.y, strict=True)) == {
        k: v for k, v in want.items() if np.isfinite(v)
    }
    assert not a.sample_ratio.mismatch
    tiles = next(b for b in blocks if isinstance(b, Metrics))
    assert tiles.items["Verdict"][0] == roi.verdict
    assert tiles.items["ROI"][0] == f"{100 * roi.roi.value:.1f}%"
    bars = chart(blocks, "Expected against measured").figure.data[0]
    assert roi.lift is not None
    assert list(bars.y) == [roi.lift.relative.value, 0.2, roi.total_incremental_margin.value, 50]
    # a campaign whose configured holdout is not what was logged: the sample-ratio warning
    skewed = build_blocks("experiments", PageContext(copy.root, Filters(campaign="skewed")))
    warned = [b.text for b in skewed if isinstance(b, Note) and b.kind == "warning"]
    assert len(warned) == 1 and "SAMPLE RATIO MISMATCH" in warned[0]
    # a period with no assignments: nothing to analyse, said plainly
    later = page_of(copy.root, "experiments", start=date(2026, 2, 1))
    assert any("No experiment in the decision log" in n for n in notes(later))


def test_loop_page_draws_the_latest_result(copy: Copy, shop: Shop) -> None:
    blocks = page_of(copy.root, "loop")
    result = copy.loop
    profit, conversions = chart(blocks, "Cumulative true profit"), chart(blocks, "Conversions")
    for t in result.totals:
        days = sorted((d for d in result.days if d.policy == t.policy), key=lambda d: d.day)
        line = trace(profit, t.policy)
        assert list(line.x) == [d.date for d in days]
        assert list(line.y) == pytest.approx(list(np.cumsum([d.profit for d in days])))
        assert line.y[-1] == pytest.approx(t.profit)
        assert list(trace(conversions, t.policy).y) == [d.conversions for d in days]
    totals = table(blocks, "Totals")
    assert [(r[0], r[1]) for r in totals.rows] == [(t.policy, t.profit) for t in result.totals]
    assert notes(blocks)[0] == result.verdict
    empty = page_of(shop.root, "loop")
    assert "nextbest loop" in notes(empty)[0] and "make demo" in notes(empty)[0]


def test_customer_page_shows_the_profile_history_and_explanation(copy: Copy) -> None:
    ask = page_of(copy.root, "customer")
    assert len(ask) == 1 and "customer id" in notes(ask)[0]
    with read_warehouse(copy.root) as wh:
        ev = wh.table("events").to_pandas()
        dec = wh.table("decisions").to_pandas()
        n = ev.customer_id.value_counts().rename("n").reset_index()
        top = n.sort_values(["n", "customer_id"], ascending=[False, True]).customer_id
        assert notes(ask)[0].split("e.g. ")[1].startswith(", ".join(top.head(5)))  # examples
        sent = dec[dec.decision_id.str.startswith("daily-email:") & dec.offer_id.notna()]
        customer = str(sent.customer_id.iloc[0])  # one the e-mail of the day was sent to
        ws = Workspace.open(copy.root)
        ws.__dict__["warehouse"] = wh
        truth = explain(ws, load_campaign(copy.root / "campaign.toml"), customer, DAY)
    assert [e.status for e in truth.offers].count("chosen") == (sent.customer_id == customer).sum()
    for service in (copy.service, None):
        blocks = page_of(copy.root, "customer", service, customer=customer)
        rows = table(blocks, "Next best action").rows + table(blocks, "Why not the others").rows
        assert [(r[0], r[2], r[3]) for r in rows] == [
            (e.offer_id, e.status, e.slot) for e in truth.offers
        ]
        for row, e in zip(rows, truth.offers, strict=True):
            assert all(reason in row[-1] for reason in e.reasons)
            assert all(b.label in row[-1] for b in e.binding)  # the constraints that bound
            assert e.reasons or f"p_buy {e.parts['p_buy']:.4g}" in row[-1]
        history = chart(blocks, "History")
        mine = ev[ev.customer_id == customer]
        drawn = {t.name: len(t.x) for t in history.figure.data}
        assert drawn == {
            **mine.type.value_counts().to_dict(),
            "decision": int((dec.customer_id == customer).sum()),
        }
        profile = table(blocks, "The 360 profile")
        assert ("snapshot" in profile.note) == (service is not None)
        bought = mine[(mine.type == "purchase") & (mine.ts < DAY)]
        orders = bought.basket_id.fillna(bought.event_id).nunique()
        assert dict(profile.rows)["frequency_365"] == str(orders)
        if service is not None:
            snap = Snapshot(current_snapshot(copy.root))
            tiles = next(b for b in blocks if isinstance(b, Metrics))
            assert tiles.items["Segment"][0] == snap.profile(snap.row(customer) or 0)["segment"]
    unknown = build_blocks("customer", PageContext(copy.root, Filters(customer="nobody")))
    assert [b.kind for b in unknown] == ["warning"] and "nobody" in notes(unknown)[0]
