"""The simulator: deterministic, consistent with its ground truth, realistic in aggregate."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.simulate import RetailEnvironment, SimConfig, simulate


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".json"
    }


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """20,000 members over 30 days with the random policy, as published in the README."""
    out = tmp_path_factory.mktemp("sim") / "out"
    simulate(SimConfig(n_customers=20_000, days=30, seed=7), out)
    tables = {
        name: pq.read_table(out / f"{name}.parquet").to_pandas()
        for name in ("customers", "offers", "decisions", "events")
    }
    tables["truth"] = pq.read_table(out / "truth" / "decisions.parquet").to_pandas()
    return out, tables


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    config = SimConfig(n_customers=2_000, days=5, seed=3)
    simulate(config, tmp_path / "a")
    simulate(config, tmp_path / "b")
    simulate(config.model_copy(update={"seed": 4}), tmp_path / "c")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["events.parquet"] != digest(tmp_path / "c")["events.parquet"]


def test_aggregate_rates_are_in_published_bands(run: tuple[Path, dict[str, pd.DataFrame]]) -> None:
    counts = run[1]["events"].type.value_counts()
    sent = counts["email_sent"]
    open_rate = counts["email_open"] / sent
    click_rate = counts["email_click"] / sent
    assert 0.15 <= open_rate <= 0.25
    assert 0.01 <= click_rate <= 0.03
    assert 0.05 <= click_rate / open_rate <= 0.15
    assert 0.001 <= counts["unsubscribe"] / sent <= 0.003
    assert 0.015 <= counts["purchase"] / counts["visit"] <= 0.04


def test_events_are_consistent_with_the_rules(run: tuple[Path, dict[str, pd.DataFrame]]) -> None:
    _, t = run
    ev, dec, cust = t["events"], t["decisions"], t["customers"]
    assert ev.event_id.is_unique and dec.decision_id.is_unique
    # Every click follows an open of the same e-mail (the e-mail of that day's decision).
    sent_at = dec.set_index("decision_id").ts
    opens = ev[ev.type == "email_open"]
    opened = pd.Series(
        opens.ts.to_numpy(),
        index=pd.MultiIndex.from_arrays([opens.customer_id, sent_at[opens.decision_id].to_numpy()]),
    )
    clicks = ev[ev.type == "email_click"]
    key = pd.MultiIndex.from_arrays([clicks.customer_id, sent_at[clicks.decision_id].to_numpy()])
    assert len(clicks) > 0 and key.isin(opened.index).all()
    assert (clicks.ts.to_numpy() >= opened[key].to_numpy()).all()
    no_consent = set(cust.customer_id[~cust.consent_email])
    assert not no_consent & set(dec.customer_id)
    unsub = ev[ev.type == "unsubscribe"].groupby("customer_id").ts.min()
    sends = ev[ev.type == "email_sent"].merge(unsub.rename("unsub_ts"), on="customer_id")
    assert len(sends) > 0 and (sends.ts <= sends.unsub_ts).all()
    signup = cust.set_index("customer_id").signup_ts
    first_send = dec.groupby("customer_id").ts.min()
    assert (first_send > signup[first_send.index]).all()
    # The random policy logs the marginal probability of a sale in a slot: 1 / open sales.
    n_open = np.where(dec.ts.dt.day == 1, 40, 80)
    assert np.allclose(dec.propensity, 1 / n_open)
    assert (dec.groupby(["customer_id", "ts"]).offer_id.nunique() == 3).all()
    purchases = ev[ev.type == "purchase"]
    assert (purchases.amount > 0).all() and purchases.customer_id.isin(cust.customer_id).all()


def test_observed_clicks_recover_the_true_click_probabilities(
    run: tuple[Path, dict[str, pd.DataFrame]],
) -> None:
    _, t = run
    clicked = set(t["events"].decision_id[t["events"].type == "email_click"])
    truth = t["truth"].assign(clicked=lambda d: d.decision_id.isin(clicked))
    truth["bucket"] = pd.qcut(truth.p_click, 5, labels=False)
    by = truth.groupby("bucket").agg(
        p=("p_click", "mean"), seen=("clicked", "mean"), n=("clicked", "size")
    )
    se = np.sqrt(by.p * (1 - by.p) / by.n)
    assert (np.abs(by.seen - by.p) < 4 * se).all(), by
    assert by.p.iloc[-1] > 3 * by.p.iloc[0]  # the buckets really differ


def test_treatment_effects_have_the_true_signs(tmp_path: Path) -> None:
    """Mail a random half each day: persuadables buy more when mailed, sleeping dogs less."""
    config = SimConfig(n_customers=30_000, days=20, seed=11)
    env = RetailEnvironment(config)
    truth = pd.Series(
        np.asarray(["sure_thing", "persuadable", "sleeping_dog", "lost_cause"])[
            env.world.effect_type
        ],
        index=env.world.customer_ids(),
    )
    rng = np.random.default_rng(0)
    rows = []
    for day in range(config.days):
        members = env.eligible(day)
        mailed = members[rng.random(len(members)) < 0.5]
        held = np.setdiff1d(members, mailed)
        sales = env.open_sales(day)[:3]
        ids = env.world.customer_ids(mailed)
        decisions = pa.table(
            {
                "decision_id": [f"d{day}-{i}" for i in range(3 * len(mailed))],
                "customer_id": np.repeat(ids, 3),
                "offer_id": np.tile(env.world.sale_ids(sales), len(mailed)),
                "slot": np.tile([1, 2, 3], len(mailed)),
            }
        )
        ev = env.step(day, decisions).events.to_pandas()
        bought = set(ev.customer_id[ev.type == "purchase"])
        for group, who in (("mailed", ids), ("held", env.world.customer_ids(held))):
            rows.append(
                pd.DataFrame(
                    {
                        "group": group,
                        "kind": truth[who].to_numpy(),
                        "bought": np.isin(who, list(bought)),
                    }
                )
            )
    rate = pd.concat(rows).groupby(["kind", "group"]).bought.mean().unstack()
    effect = rate.mailed - rate.held
    assert effect["persuadable"] > 0.001
    assert effect["sleeping_dog"] < 0
    assert abs(effect["lost_cause"]) < effect["persuadable"] / 2
    assert rate.held["sure_thing"] > rate.held["persuadable"]


def test_csv_output_meets_the_ingestion_contract(tmp_path: Path) -> None:
    simulate(SimConfig(n_customers=1_000, days=4, seed=2, file_format="csv"), tmp_path / "out")
    ws = Workspace.init(tmp_path / "ws")
    results = ingest(ws.warehouse, [tmp_path / "out"], ws.config.ingest)
    assert [r.status for r in results] == ["loaded"] * 5
    assert sum(r.total("quarantined") for r in results) == 0
    assert ws.warehouse.count("customers") == 1_000
    assert ws.warehouse.count("events") == sum(
        r.tables["events"].loaded for r in results if "events" in r.tables
    )
    ws.close()


def test_a_tiny_run_with_empty_days_works(tmp_path: Path) -> None:
    """Regression: numpy's zfill fails on empty arrays, as on a day without a referral."""
    summary = simulate(SimConfig(n_customers=10, days=3, seed=1), tmp_path)
    assert summary.rows["customers"] == 10
    assert summary.rows["decisions"] % 3 == 0
