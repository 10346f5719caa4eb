"""Real-time decisions against the batch's own numbers and the campaign's promises."""

from __future__ import annotations

import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from nextbest.data.workspace import Workspace
from nextbest.decide import load_campaign
from nextbest.decide.assign import assign
from nextbest.decide.batch import value_parts
from nextbest.decide.day import day_inputs
from nextbest.models import ModelStore
from nextbest.serve.online import OnlineDecider, UnknownCustomer, serving_campaigns
from nextbest.serve.schemas import DecideRequest, EventIn
from nextbest.serve.snapshot import Snapshot, current_snapshot
from nextbest.serve.store import ContactCounts, DecisionRow, OnlineStore
from tests.serve.conftest import DAY, Shop

NOON = DAY + timedelta(hours=12)


def _decider(shop: Shop, db: Path) -> OnlineDecider:
    model, _ = ModelStore(shop.root / "models").load("propensity")
    snap = Snapshot(current_snapshot(shop.root))
    return OnlineDecider(snap, model, serving_campaigns(shop.root), OnlineStore(db))


@pytest.fixture
def decider(shop: Shop, tmp_path: Path) -> OnlineDecider:
    return _decider(shop, tmp_path / "online.db")


def _ids(shop: Shop, n: int) -> list[str]:
    ws = Workspace.open(shop.root)
    try:
        ids = ws.warehouse.table("customers").order_by("customer_id").customer_id.to_pandas()
        return [str(i) for i in ids.iloc[:n]]
    finally:
        ws.close()


def _ask(decider: OnlineDecider, cid: str, channel: str, **context):
    at = context.pop("at", NOON)
    body = {"customer_id": cid, "channel": channel, "context": {"time": at.isoformat(), **context}}
    return decider.decide(DecideRequest.model_validate(body))


def test_scores_are_the_batch_scores(shop: Shop, decider: OnlineDecider) -> None:
    ids = _ids(shop, 40)
    ws = Workspace.open(shop.root)
    try:
        spec = load_campaign(shop.root / "campaign.toml")
        inputs = day_inputs(ws.warehouse, ModelStore(ws.models), spec, DAY, customer_ids=ids)
    finally:
        ws.close()
    camp = decider.campaigns["daily-email"]
    online_ids = list(camp.offers.offer_id)
    cols = [online_ids.index(o) for o in inputs.offers.offer_id]
    got = np.array(
        [
            decider.model.predict_proba_matrix(decider.matrix(decider.row(c), camp.index[cols]))[
                :, 1
            ]
            for c in inputs.customer_ids
        ]
    )
    np.testing.assert_allclose(got, inputs.p_response, rtol=1e-5, atol=1e-7)


def test_the_batch_dual_price_is_paid(shop: Shop, decider: OnlineDecider) -> None:
    camp = decider.campaigns["daily-email"]
    j = list(camp.offers.offer_id).index(shop.scarce)
    price = camp.prices["units"][j]
    assert price > 0, "the batch's stock constraint should bind and price the scarce offer"
    ids = _ids(shop, 400)
    with_price = [_ask(decider, c, "email") for c in ids]
    shown = [o for r in with_price for o in r.offers if o.offer_id == shop.scarce]
    for o in shown:  # chosen only when its value pays the shadow cost
        assert o.shadow_cost > 0
        assert o.score == pytest.approx(o.value - o.shadow_cost, abs=1e-5)
        assert o.score > 0 or o.explored
    free = _decider(shop, decider.store.path.with_name("free.db"))
    free.campaigns["daily-email"].prices = {}
    without = [_ask(free, c, "email") for c in ids]
    shown_free = [o for r in without for o in r.offers if o.offer_id == shop.scarce]
    assert len(shown) < len(shown_free)


def test_consent_and_unsubscribes_are_hard(shop: Shop, decider: OnlineDecider) -> None:
    ids = _ids(shop, 300)
    ws = Workspace.open(shop.root)
    try:
        cust = ws.warehouse.table("customers").to_pandas().set_index("customer_id")
    finally:
        ws.close()
    answered = {c: _ask(decider, c, "email") for c in ids}
    served = [c for c, r in answered.items() if r.offers]
    refused = [c for c, r in answered.items() if not r.offers]
    assert served and refused
    assert all(cust.consent_email[c] is True or cust.consent_email[c] == 1 for c in served)
    no_consent = [c for c in ids if not cust.consent_email[c]]
    assert no_consent and all(not answered[c].offers for c in no_consent)
    assert all("no e-mail consent" in answered[c].reasons for c in no_consent)
    # an unsubscribe arriving now stops the next decision at once
    cid = served[0]
    decider.store.add_events(
        [EventIn(event_id="u1", customer_id=cid, ts=NOON, type="unsubscribe", channel="email")]
    )
    again = _ask(decider, cid, "email", at=NOON + timedelta(minutes=1))
    assert not again.offers
    assert any(r.startswith("unsubscribed from email") for r in again.reasons)


def test_daily_cap_holds_and_holdout_gets_control_rows(shop: Shop, decider: OnlineDecider) -> None:
    ids = _ids(shop, 200)
    arms = assign(
        np.array(ids, dtype=object),
        "web-reco",
        "t1",
        {"holdout": 0.2, "optimised": 0.8},
        names=True,
    )
    treated = [c for c, a in zip(ids, arms, strict=True) if a != "holdout"]
    held = [c for c, a in zip(ids, arms, strict=True) if a == "holdout"]
    cid = next(c for c in treated if _ask(decider, c, "web").offers)
    second = _ask(decider, cid, "web", at=NOON + timedelta(minutes=5))
    third = _ask(decider, cid, "web", at=NOON + timedelta(minutes=10))
    assert second.offers and not third.offers
    assert "2 web contacts today (limit 2)" in third.reasons
    for c in held[:20]:
        r = _ask(decider, c, "web")
        assert r.held_out and r.arm == "holdout" and not r.offers
    rows = decider.store.decisions_for(held[0])
    assert rows and all(r["slot"] == 0 and r["offer_id"] is None for r in rows)


def test_exploration_share_and_logged_probabilities(shop: Shop, decider: OnlineDecider) -> None:
    ids = _ids(shop, 600)
    offers = [o for c in ids for o in _ask(decider, c, "web").offers]
    explored = np.array([o.explored for o in offers])
    n = len(offers)
    assert n > 300
    share = explored.mean()
    assert abs(share - 0.2) < 3 * np.sqrt(0.2 * 0.8 / n)  # the configured 20%, within 3 s.e.
    probs = np.array([o.probability for o in offers])
    assert ((probs > 0) & (probs <= 1)).all()
    # epsilon-greedy over E candidates: 0.8 + 0.2 / E for the optimiser's offer (which the
    # draw may also pick), 0.2 / E for any other
    low = probs < 0.5
    assert low.sum() > 0 and low[~explored].sum() == 0
    m = len(decider.campaigns["web-reco"].offers)
    for p, base in ((probs[low], 0.0), (probs[~low], 0.8)):
        e = 0.2 / (p - base)
        assert np.allclose(e, np.round(e), atol=0.02 * e) and (np.round(e) <= m).all()


def test_cart_then_store(shop: Shop, decider: OnlineDecider) -> None:
    cid = _ids(shop, 1)[0]
    assert not any(o.offer_id == "CART10" for o in _ask(decider, cid, "store").offers)
    evening = DAY + timedelta(hours=20)
    decider.store.add_events(
        [
            EventIn(
                event_id="c1",
                customer_id=cid,
                ts=evening,
                type="add_to_cart",
                product_id="P-SUN",
                channel="web",
            ),
        ]
    )
    morning = DAY + timedelta(days=1, hours=10)
    sunny = _ask(decider, cid, "store", weather="sun", at=morning)
    assert [o.offer_id for o in sunny.offers] == ["CART10"]
    rain = _ask(decider, cid, "store", weather="rain", at=morning)
    assert not rain.offers
    assert any("cart_categories" in r for r in rain.reasons)
    with_bag = _ask(decider, cid, "store", weather="rain", cart=["P-BAG"], at=morning)
    assert not with_bag.offers  # the sunglasses are still in the cart
    decider.store.add_events(
        [
            EventIn(
                event_id="b1",
                customer_id=cid,
                ts=morning,
                type="purchase",
                product_id="P-SUN",
                channel="web",
                quantity=1,
                amount=120.0,
            )
        ]
    )
    bought = _ask(decider, cid, "store", weather="rain", cart=["P-BAG"], at=morning)
    assert [o.offer_id for o in bought.offers] == ["CART10"]


def test_unknown_customer(decider: OnlineDecider) -> None:
    with pytest.raises(UnknownCustomer, match="not in the snapshot"):
        _ask(decider, "nobody", "web")


def test_the_fast_paths_give_the_shared_code_s_numbers(shop: Shop, decider: OnlineDecider) -> None:
    """The per-request shortcuts (compiled trees and np.interp for the calibrated model, the
    affine value parts, one id's arm) against the shared functions they stand for."""
    ids = _ids(shop, 300)
    camp = decider.campaigns["daily-email"]
    X = np.vstack([decider.matrix(decider.row(c), camp.index) for c in ids[:40]])
    assert (decider._forest is not None) == hasattr(decider.model, "forest")
    assert len(X) == 40 * len(camp.index)
    want = decider.model.predict_proba_matrix(X)[:, 1]
    got = decider.probabilities(X)
    assert 0.001 < want.mean() < 0.5 and np.unique(want).size >= 5  # isotonic: a few steps
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    if decider._forest is not None:  # the trees' raw scores are LightGBM's, bit for bit
        booster = decider.model.booster_.booster_
        raw = booster.predict(X, raw_score=True, num_threads=1)
        assert np.unique(raw).size > 1000
        assert np.array_equal(decider._forest.raw(X), raw)
    p_buy = np.random.default_rng(3).random((25, len(camp.offers)))
    batch = value_parts(camp.spec, camp.offers, p_buy, camp.weight, camp.lever)
    for i in range(len(p_buy)):
        for fast, full in zip(camp.value_parts(p_buy[i]), batch, strict=True):
            np.testing.assert_allclose(fast, full[i], rtol=1e-12, atol=1e-12)
    web = decider.campaigns["web-reco"]
    e = web.spec.campaign.experiment
    assert e is not None
    arms = assign(np.array(ids, dtype=object), e.name, e.salt, e.weights(), names=True)
    assert {"holdout", "optimised"} <= set(arms)
    assert [decider._arm(web, c) for c in ids] == list(arms)


def test_the_service_s_store_checkpoints_off_the_request_path(tmp_path: Path) -> None:
    """With a checkpointer the WAL reaches the database file within its period, though no
    commit crossed SQLite's 1,000-page mark; without, it stays in the WAL."""

    def decide_a_few(store: OnlineStore) -> None:
        for i in range(30):
            row = DecisionRow(
                decision_id=f"d{i}", ts=NOON, customer_id=f"C{i}", offer_id="O1",
                channel="web", slot=1, request_id=f"r{i}",
            )  # fmt: skip
            store.decide_atomically(
                f"C{i}", "web", day_start=DAY, week_start=DAY, choose=lambda _c, row=row: [row]
            )

    def in_the_file(db: Path) -> int:  # the rows a reader of the main file alone would see
        copy = db.with_name(db.stem + "-copy.db")
        shutil.copy2(db, copy)
        con = sqlite3.connect(copy)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            return (
                con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
                if ("decisions" in tables)
                else 0
            )
        finally:
            con.close()

    plain = OnlineStore(tmp_path / "plain.db")
    decide_a_few(plain)
    served = OnlineStore(tmp_path / "served.db", checkpoint_every=0.05)
    decide_a_few(served)
    deadline = time.monotonic() + 10
    while in_the_file(served.path) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_the_file(served.path) == 30
    assert in_the_file(plain.path) == 0
    assert len(served.decisions_for("C7")) == 1  # and every row reads back as before
    served.close()
    plain.close()


def test_queued_writers_keep_a_cap_across_threads(tmp_path: Path) -> None:
    """Writers waiting their turn on the store's lock file still count and record atomically:
    24 requests from 8 threads for one customer with room for 3 contacts record exactly 3."""
    store = OnlineStore(tmp_path / "online.db", queue_writers=True)
    seen: list[int] = []

    def one(i: int) -> int:
        def choose(counts: ContactCounts) -> list[DecisionRow]:
            seen.append(counts.today)
            if counts.today >= 3:
                return []
            return [
                DecisionRow(
                    decision_id=f"d{i}", ts=NOON, customer_id="C1", offer_id="O1",
                    channel="web", slot=1, request_id=f"r{i}",
                )
            ]  # fmt: skip

        rows = store.decide_atomically("C1", "web", day_start=DAY, week_start=DAY, choose=choose)
        return len(rows)

    with ThreadPoolExecutor(8) as pool:
        recorded = sum(pool.map(one, range(24)))
    assert recorded == 3
    assert sorted(seen) == [0, 1, 2] + [3] * 21
    assert (tmp_path / "online.db.writers").exists()
    assert len(store.decisions_for("C1")) == 3


def test_one_id_s_hash_position_is_assign_s() -> None:
    """hash_position (SipHash and pandas' mix on a Python int) against
    decide.assign.hash_position (pandas' hash_array), on ids of every kind of text."""
    import hashlib

    from nextbest.decide.assign import hash_position as reference
    from nextbest.serve.campaigns import hash_position

    rng = np.random.default_rng(5)
    ids = [f"C{i:07d}" for i in rng.integers(0, 10**7, 3000)]
    ids += ["", "é", "Zoë-Müller", "中文客户", "x" * 500, "a\tb", "🙂"]
    key = hashlib.md5(b"t1:web-reco").hexdigest()[:16]
    want = reference(np.array(ids, dtype=object), "web-reco", "t1")
    got = np.array([hash_position(c, key) for c in ids])
    assert np.array_equal(got, want)
    assert 0.45 < float(np.mean(got)) < 0.55 and got.min() >= 0.0 and got.max() < 1.0
