"""The written tables obey the rules of the world: ids, references, order of events, consent."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.simulate.conftest import Run

START, END = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-31", tz="UTC")


@pytest.mark.parametrize(
    ("table", "column", "pattern"),
    [
        ("customers", "customer_id", r"C\d{7}"),
        ("offers", "offer_id", r"S\d{3}-\d{2}"),
        ("products", "product_id", r"PS\d{3}-\d{2}-\d"),
        ("decisions", "decision_id", r"D\d{10}"),
        ("events", "event_id", r"E\d{11}"),
    ],
)
def test_ids_are_unique_and_well_formed(run: Run, table: str, column: str, pattern: str) -> None:
    ids = run[table][column]
    assert ids.is_unique and ids.str.fullmatch(pattern).all()


def test_every_reference_points_at_a_row(run: Run) -> None:
    ev, dec = run["events"], run["decisions"]
    for frame, column, table, key in (
        (ev, "customer_id", "customers", "customer_id"),
        (ev, "offer_id", "offers", "offer_id"),
        (ev, "product_id", "products", "product_id"),
        (ev, "decision_id", "decisions", "decision_id"),
        (dec, "customer_id", "customers", "customer_id"),
        (dec, "offer_id", "offers", "offer_id"),
        (run["customers"], "referred_by", "customers", "customer_id"),
    ):
        used = frame[column].dropna()
        assert len(used) and used.isin(run[table][key]).all(), (column, table)
    assert ev.customer_id.notna().all()


def test_every_click_follows_an_open_of_the_same_email_and_leads_to_a_visit(run: Run) -> None:
    ev, dec = run["events"], run["decisions"]
    sent_at = dec.set_index("decision_id").ts
    opens = ev[ev.type == "email_open"]
    opened = pd.Series(
        opens.ts.to_numpy(),
        index=pd.MultiIndex.from_arrays([opens.customer_id, sent_at[opens.decision_id].to_numpy()]),
    )
    clicks = ev[ev.type == "email_click"]
    key = pd.MultiIndex.from_arrays([clicks.customer_id, sent_at[clicks.decision_id].to_numpy()])
    assert len(clicks) > 1_000 and key.isin(opened.index).all()
    assert (clicks.ts.to_numpy() > opened[key].to_numpy()).all()
    shown = dec.set_index("decision_id").offer_id
    assert (clicks.offer_id.to_numpy() == shown[clicks.decision_id].to_numpy()).all()
    visits = ev[(ev.type == "visit") & ev.decision_id.notna()].set_index("decision_id")
    assert set(visits.index) == set(clicks.decision_id)
    after = visits.ts[clicks.decision_id].to_numpy() > clicks.ts.to_numpy()
    assert after.all()


def test_purchases_follow_a_cart_and_are_priced_from_the_catalogue(run: Run) -> None:
    ev = run["events"]
    buys = ev[ev.type == "purchase"]
    carts = ev[ev.type == "add_to_cart"]
    key = ["customer_id", "product_id", "offer_id"]
    both = buys.merge(carts, on=key, suffixes=("", "_cart"))
    first_cart = both[both.ts_cart < both.ts].groupby("event_id").size()
    assert len(buys) > 500 and set(first_cart.index) == set(buys.event_id)
    price = run["products"].set_index("product_id").price[buys.product_id].to_numpy()
    discount = run["offers"].set_index("offer_id").discount[buys.offer_id].to_numpy()
    expected = np.round(price * (1 - discount) * buys.quantity.to_numpy(), 2)
    assert np.allclose(buys.amount, expected, atol=0.011)
    sold = buys.groupby("offer_id").quantity.size()
    capacity = run["offers"].set_index("offer_id").capacity[sold.index]
    assert (sold <= capacity).all()


def test_sales_are_visited_and_bought_only_while_open(run: Run) -> None:
    ev = run["events"]
    shop = ev[ev.type.isin(["email_click", "visit", "view", "add_to_cart", "purchase"])]
    offers = run["offers"].set_index("offer_id")
    start = offers.start_ts[shop.offer_id].to_numpy()
    end = offers.end_ts[shop.offer_id].to_numpy()
    assert len(shop) > 10_000 and shop.offer_id.notna().all()
    assert ((shop.ts.to_numpy() >= start) & (shop.ts.to_numpy() < end)).all()


def test_returns_follow_a_purchase_of_the_same_item(run: Run) -> None:
    ev = run["events"]
    key = ["customer_id", "product_id", "amount"]
    back = ev[ev.type == "return"].merge(ev[ev.type == "purchase"], on=key, suffixes=("", "_buy"))
    returns = ev[ev.type == "return"]
    assert len(returns) > 20
    assert set(back[back.ts - back.ts_buy >= pd.Timedelta(days=2)].event_id) == set(
        returns.event_id
    )


def test_emails_respect_consent_signup_and_unsubscribes(run: Run) -> None:
    ev, dec, cust = run["events"], run["decisions"], run["customers"]
    no_consent = set(cust.customer_id[~cust.consent_email])
    assert not no_consent & set(dec.customer_id)
    unsub = ev[ev.type == "unsubscribe"].groupby("customer_id").ts.min()
    sends = ev[ev.type == "email_sent"].merge(unsub.rename("unsub_ts"), on="customer_id")
    assert len(unsub) > 100 and (sends.ts <= sends.unsub_ts).all()
    signup = cust.set_index("customer_id").signup_ts
    first = ev.groupby("customer_id").ts.min()
    first = first[ev[ev.type != "referral"].customer_id.unique()]
    assert (first > signup[first.index]).all()
    assert ev.ts.between(START, END, inclusive="left").all()


def test_each_email_features_distinct_sales_with_random_policy_propensities(run: Run) -> None:
    """Random policy: propensity 1 / open sales (40 on the first day, 80 after); see policies."""
    dec = run["decisions"]
    n_open = np.where(dec.ts.dt.day == 1, 40, 80)
    assert np.allclose(dec.propensity, 1 / n_open)
    assert ((dec.propensity > 0) & (dec.propensity <= 1)).all()
    per_email = dec.groupby(["customer_id", "ts"]).agg(n=("offer_id", "nunique"), s=("slot", "sum"))
    assert (per_email.n == 3).all() and (per_email.s == 6).all()
    sent = run["events"].query("type == 'email_sent'")
    assert len(sent) == len(per_email)
    assert (dec.channel == "email").all() and (dec.policy == "random").all()


def test_store_visits_carry_the_true_weather_and_referrals_the_true_referrer(run: Run) -> None:
    ev, cust = run["events"], run["customers"].set_index("customer_id")
    stores = ev[ev.type == "store_visit"]
    weather = run["truth_weather"].assign(date=lambda d: pd.to_datetime(d.date).dt.date)
    truth = weather.set_index(["region", "date"]).weather
    said = stores.attributes.map(lambda a: json.loads(a)["weather"])
    key = pd.MultiIndex.from_arrays([cust.region[stores.customer_id], stores.ts.dt.date])
    assert len(stores) > 100 and (said.to_numpy() == truth[key].to_numpy()).all()
    rainy = truth[key].eq("rain").mean()
    assert rainy < weather.rain.mean()  # rain keeps members at home
    refs = ev[ev.type == "referral"]
    referred = refs.attributes.map(lambda a: json.loads(a)["referred"])
    assert len(refs) > 50
    assert (cust.referred_by[referred].to_numpy() == refs.customer_id.to_numpy()).all()
    assert (cust.signup_ts[referred].to_numpy() == refs.ts.to_numpy()).all()
