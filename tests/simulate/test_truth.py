"""What the data shows recovers the ground truth written beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.simulate.conftest import Run

TYPES = ("sure_thing", "persuadable", "sleeping_dog", "lost_cause")


def test_observed_clicks_recover_the_true_click_probabilities(run: Run) -> None:
    clicked = set(run["events"].decision_id[run["events"].type == "email_click"])
    truth = run["truth_decisions"].assign(clicked=lambda d: d.decision_id.isin(clicked))
    truth["bucket"] = pd.qcut(truth.p_click, 5, labels=False)
    by = truth.groupby("bucket").agg(
        p=("p_click", "mean"), seen=("clicked", "mean"), n=("clicked", "size")
    )
    se = np.sqrt(by.p * (1 - by.p) / by.n)
    assert (np.abs(by.seen - by.p) < 4 * se).all(), by
    assert by.p.iloc[-1] > 3 * by.p.iloc[0]  # the buckets really differ


def _bought(run: Run) -> pd.DataFrame:
    """Member-days addressed, with whether the member bought (or tried to: waitlist)."""
    ev = run["events"]
    buys = ev[ev.type.isin(["purchase", "waitlist"])]
    days = set(zip(buys.customer_id, buys.ts.dt.date, strict=True))
    emails = run["truth_emails"].copy()
    emails["bought"] = [
        (c, d) in days for c, d in zip(emails.customer_id, emails.date, strict=True)
    ]
    return emails


def test_purchases_match_the_true_probability_of_buying(holdout_run: Run) -> None:
    emails = _bought(holdout_run)
    emails["p"] = np.where(emails.mailed, emails.p_buy_if_mailed, emails.p_buy_if_not)
    by = emails.groupby(["effect_type", "mailed"]).agg(
        seen=("bought", "sum"), expected=("p", "sum")
    )
    assert by.seen.sum() > 1_000
    assert (np.abs(by.seen - by.expected) < 4 * np.sqrt(by.expected) + 2).all(), by


def test_a_random_holdout_recovers_the_true_effect_of_the_email(holdout_run: Run) -> None:
    """Persuadables buy more when mailed, sleeping dogs less; as the truth says, per type."""
    emails = _bought(holdout_run)
    rows = []
    for kind in TYPES:
        of = emails[emails.effect_type == kind]
        mailed, held = of[of.mailed], of[~of.mailed]
        seen = mailed.bought.mean() - held.bought.mean()
        true = mailed.p_buy_if_mailed.mean() - held.p_buy_if_not.mean()
        se = np.sqrt(mailed.bought.mean() / len(mailed) + max(held.bought.mean(), 1e-6) / len(held))
        rows.append({"type": kind, "seen": seen, "true": true, "se": se})
    effect = pd.DataFrame(rows).set_index("type")
    assert (np.abs(effect.seen - effect.true) < 4 * effect.se).all(), effect
    assert effect.seen["persuadable"] > 5 * effect.se["persuadable"], effect
    assert effect.seen["sleeping_dog"] < -3 * effect.se["sleeping_dog"], effect
    for kind in ("sure_thing", "lost_cause"):
        assert abs(effect.true[kind]) < effect.true["persuadable"] / 5, effect
    # The summary's true effect per type is the mean of the e-mails' true effects.
    truth = holdout_run.summary.truth
    mean = emails[emails.mailed].groupby("effect_type").uplift.mean()
    for kind in TYPES:
        assert truth[f"uplift_{kind}"] == pytest.approx(mean[kind], rel=1e-3, abs=1e-7)


def test_holdout_rows_are_controls_with_their_probability(holdout_run: Run) -> None:
    dec = holdout_run["decisions"]
    held = dec[dec.arm == "holdout"]
    assert held.offer_id.isna().all() and (held.slot == 0).all()
    assert (held.propensity == 0.5).all() and (dec.experiment == "daily_holdout").all()
    mailed = dec[dec.arm == "mailed"]
    assert np.allclose(mailed.propensity * np.where(mailed.ts.dt.day == 1, 40, 80), 0.5)
    share = held.groupby(held.ts).size() / dec.groupby(dec.ts).customer_id.nunique()
    assert share.between(0.45, 0.55).all()
    sent = holdout_run["events"].query("type == 'email_sent'")
    assert not set(zip(held.customer_id, held.ts.dt.date, strict=True)) & set(
        zip(sent.customer_id, sent.ts.dt.date, strict=True)
    )


def test_novelty_seekers_click_new_designers_more(run: Run) -> None:
    dec = run["decisions"].merge(run["truth_members"][["customer_id", "novelty"]], on="customer_id")
    dec["new"] = dec.offer_id.isin(run["offers"].offer_id[run["offers"].tags == "new_designer"])
    dec["clicked"] = dec.decision_id.isin(
        run["events"].decision_id[run["events"].type == "email_click"]
    )
    dec["seeker"] = dec.novelty > dec.novelty.quantile(0.75)
    rate = dec.groupby(["seeker", "new"]).clicked.mean()
    lift_seekers = rate[True, True] / rate[True, False]
    lift_others = rate[False, True] / rate[False, False]
    assert lift_seekers > 1.3 * lift_others, rate


def test_fatigue_lowers_the_open_rate(run: Run) -> None:
    ev = run["events"]
    day = ev.ts.dt.day
    sent = ev[ev.type == "email_sent"].groupby(day).size()
    opens = ev[ev.type == "email_open"].groupby(day).size()
    rate = opens / sent
    # Day 1: nobody had an e-mail the week before; from day 8 everyone had seven.
    assert rate[1] > 1.3 * rate[rate.index >= 8].mean(), rate
