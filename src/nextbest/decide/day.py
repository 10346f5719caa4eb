"""One day's decision inputs: the open offers, the customers, their scores and eligibility.

:func:`day_inputs` is the one path from the warehouse and the model store to the matrices the
optimiser needs, used by the daily batch (every customer) and by explanations (one customer),
so an explanation always tells what the batch did:

- offers open at the campaign's send time on the campaign's channel, less those excluded, with
  the campaign file's per-offer settings (stock, budget, redemption cost, eligibility);
- customers who joined before the send time;
- scores: the latest propensity model on the point-in-time features of every customer x offer
  pair, as of 00:00 UTC of the day: the features :func:`nextbest.features.offer_customer_features`
  gives training, put together and scored in blocks of customers (:mod:`.scoring`). A click
  model's probabilities are turned into purchase probabilities with the click-to-purchase rate
  logged so far (per category, shrunk to the overall rate with a prior of 50 clicks);
- eligibility: consent, unsubscribes and the contact policy (:mod:`.contact`), the per-offer
  impression limit, the campaign's and each offer's rule (:mod:`.rules`), with the count of
  pairs each reason excluded;
- the arm of the campaign's experiment (:mod:`.assign`): ``hash(salt, experiment, customer)``
  below the holdout share is the holdout, the rest shared by the treatment arms' weights,
  stable across runs and machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import ibis
import numpy as np
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.decide.assign import assign, hash_position
from nextbest.decide.campaign import CampaignFile
from nextbest.decide.contact import ContactState, contact_state
from nextbest.decide.rules import compile_rule
from nextbest.decide.scoring import PairScorer, pair_scorer
from nextbest.errors import ConfigError, DataError
from nextbest.features.decision_features import RESPONSES
from nextbest.models.store import ModelStore
from nextbest.progress import NullReporter, Reporter

__all__ = [
    "DayInputs",
    "click_to_purchase",
    "day_inputs",
    "holdout_mask",
    "open_offers",
    "position_weights",
    "send_time",
    "units_sold",
    "with_settings",
]

_PRIOR_CLICKS = 50.0
_PER_OFFER = ("offer_", "aff_", "pop_")  # feature columns that differ between offers


@dataclass
class DayInputs:
    """Everything the optimiser needs for one campaign on one day, customers x offers."""

    send_ts: datetime
    customer_ids: np.ndarray
    offers: pd.DataFrame  # one row per open offer, in column order of the matrices
    p_response: np.ndarray  # n x m: the model's probability at slot 1
    conversion: np.ndarray | None  # per offer P(purchase | response); None: it is a purchase
    eligible: np.ndarray  # n x m
    slots: np.ndarray  # n
    holdout: np.ndarray  # n bool
    arm: np.ndarray  # n: the experiment arm (None without an experiment)
    novel: np.ndarray  # n x m: the brand was never shown to the customer
    contact: ContactState
    customers: pd.DataFrame  # n rows: customer 360 and demographics, as the model saw them
    response: str = "click"
    model_version: str = ""
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> customers or pairs
    rule_masks: dict[str, np.ndarray] = field(default_factory=dict)  # rule text -> n x m
    position_weights: list[float] = field(default_factory=list)  # response in slot j vs 1

    @property
    def p_buy(self) -> np.ndarray:
        """n x m: purchase probability at slot 1 (made when asked, not kept: at 5M customers
        x 40 offers it is 0.8 GB beside ``p_response``, and the batch reads it once)."""
        if self.conversion is None:
            return self.p_response
        return self.p_response * self.conversion.astype(self.p_response.dtype)[None, :]


def send_time(day: datetime, campaign_time: str) -> datetime:
    hh, mm = (int(x) for x in campaign_time.split(":"))
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC)


def holdout_mask(customer_ids: np.ndarray, experiment: str, salt: str, share: float) -> np.ndarray:
    """``hash(salt, experiment, customer) < share``: the same customers on every machine."""
    if share <= 0:
        return np.zeros(len(customer_ids), dtype=bool)
    return hash_position(customer_ids, experiment, salt) < share


def open_offers(warehouse: Warehouse, spec: CampaignFile, at: datetime) -> pd.DataFrame:
    t = warehouse.table("offers")
    ts = ibis.literal(at, type="timestamp('UTC')")
    t = t.filter(
        t.start_ts.isnull() | (t.start_ts <= ts),
        t.end_ts.isnull() | (t.end_ts > ts),
        t.channels.isnull() | t.channels.contains(spec.campaign.channel),
    )
    offers = t.order_by("offer_id").to_pandas()
    known = set(warehouse.table("offers").offer_id.to_pandas()) if spec.offers else set()
    unknown = sorted(set(spec.offers) - known)
    if unknown:
        raise ConfigError(
            f"offers.{unknown[0]}: no such offer in the warehouse ({len(unknown)} unknown: "
            f"{', '.join(unknown[:5])}); load it first or fix the id"
        )
    offers = with_settings(spec, offers)
    if offers.empty:
        raise DataError(
            f"no offer is open on {spec.campaign.channel} at {at:%Y-%m-%d %H:%M} UTC; load "
            "offers whose start_ts..end_ts covers the send time, or choose another --date"
        )
    return offers


def with_settings(spec: CampaignFile, offers: pd.DataFrame) -> pd.DataFrame:
    """``offers`` less those the campaign excludes, with its per-offer settings: ``stock``
    (else the capacity), ``budget``, ``redemption_cost`` and ``rule`` (else the offer's own
    eligibility)."""
    keep = np.array([not (s := spec.offers.get(o)) or not s.exclude for o in offers.offer_id])
    offers = offers.loc[keep.astype(bool)].reset_index(drop=True)
    settings = [spec.offers.get(o) for o in offers.offer_id]
    capacity = offers.capacity.astype("float64")
    offers["stock"] = [
        s.stock if s and s.stock is not None else c for s, c in zip(settings, capacity, strict=True)
    ]
    offers["budget"] = [s.budget if s else None for s in settings]
    offers["redemption_cost"] = [s.redemption_cost if s else 0.0 for s in settings]
    offers["rule"] = [
        (s.eligibility if s and s.eligibility else None)
        or (e if isinstance(e, str) and e.strip() else None)
        for s, e in zip(settings, offers.eligibility, strict=True)
    ]
    return offers


def units_sold(warehouse: Warehouse, offer_ids: list[str], before: datetime) -> np.ndarray:
    ev = warehouse.table("events")
    ts = ibis.literal(before, type="timestamp('UTC')")
    ev = ev.filter(ev.type == "purchase", ev.offer_id.isin(offer_ids), ev.ts < ts)
    got = ev.group_by("offer_id").aggregate(units=ev.quantity.fill_null(1).sum()).to_pandas()
    units = dict(zip(got.offer_id, got.units, strict=True))
    return np.array([float(units.get(o, 0.0)) for o in offer_ids])


def click_to_purchase(warehouse: Warehouse, offers: pd.DataFrame, before: datetime) -> np.ndarray:
    """Per offer, P(purchase | click): its category's logged rate, shrunk to the overall one."""
    ev = warehouse.table("events")
    ts = ibis.literal(before, type="timestamp('UTC')")
    ev = ev.filter(ev.ts < ts, ev.decision_id.notnull())
    clicks = ev.filter(ev.type.isin(RESPONSES["click"])).select("decision_id").distinct()
    bought = ev.filter(ev.type == "purchase").select("decision_id").distinct()
    bought = bought.mutate(_b=ibis.literal(1))
    dec = warehouse.table("decisions").select("decision_id", "offer_id")
    cat = warehouse.table("offers").select("offer_id", "category")
    rows = clicks.join(dec, "decision_id").join(cat, "offer_id")
    rows = rows.left_join(bought, "decision_id")
    by = rows.group_by("category").aggregate(n=rows.count(), k=rows._b.fill_null(0).sum())
    got = by.to_pandas()
    total_n, total_k = float(got.n.sum()), float(got.k.sum())
    overall = total_k / total_n if total_n else 0.05
    rate = {
        c: (k + _PRIOR_CLICKS * overall) / (n + _PRIOR_CLICKS)
        for c, n, k in zip(got.category, got.n, got.k, strict=True)
    }
    return np.array([rate.get(c, overall) for c in offers.category])


def day_inputs(
    warehouse: Warehouse,
    store: ModelStore,
    spec: CampaignFile,
    day: datetime,
    *,
    customer_ids: list[str] | None = None,
    reporter: Reporter | None = None,
) -> DayInputs:
    """The decision inputs of ``spec`` on ``day`` (all customers, or those given)."""
    c = spec.campaign
    at = send_time(day, c.send_time)
    as_of = datetime(day.year, day.month, day.day, tzinfo=UTC)
    offers = open_offers(warehouse, spec, at)
    offers["sold"] = units_sold(warehouse, list(offers.offer_id), as_of)
    ts = ibis.literal(at, type="timestamp('UTC')")
    cust = warehouse.table("customers")
    cust = cust.filter(cust.signup_ts.isnull() | (cust.signup_ts < ts))
    if customer_ids is not None:
        cust = cust.filter(cust.customer_id.isin(customer_ids))
    ids = cust.select("customer_id").order_by("customer_id").to_pandas().customer_id.to_numpy()
    if customer_ids is not None and len(ids) < len(set(customer_ids)):
        missing = sorted(set(customer_ids) - set(ids))
        raise DataError(f"customer {missing[0]} is unknown or had not joined by {at:%Y-%m-%d}")
    if not len(ids):
        raise DataError(f"no customer had joined by {at:%Y-%m-%d %H:%M} UTC")
    n, m = len(ids), len(offers)
    try:
        model, manifest = store.load("propensity")
    except ConfigError as exc:
        raise ConfigError(
            f"decisions need a propensity model ({exc}); run 'nextbest train propensity'"
        ) from None
    reporter = reporter or NullReporter()
    reporter.start(None, "Reading customers, offers and histories")
    scorer = pair_scorer(warehouse, ids, offers, as_of)
    reporter.finish()
    missing = [f for f in manifest.features if f not in scorer.known()]
    if missing:
        raise ConfigError(
            f"the propensity model {manifest.name} needs features that decisions do not build "
            f"({', '.join(missing[:5])}); retrain it with 'nextbest train propensity'"
        )
    reporter.start(None, "Consent, contact policy and rules")
    state = contact_state(
        warehouse,
        as_of,
        c.contact,
        customer_ids=list(ids),
        offer_ids=list(offers.offer_id),
    )
    reachable = state.allowed(c.channel, at) & (state.remaining(c.channel) >= 1)
    arm = np.full(n, None, dtype=object)
    if c.experiment is not None:
        e = c.experiment
        arm = assign(ids, e.name, e.salt, e.weights(), names=True)
    holdout = arm == "holdout"
    eligible = np.repeat(reachable[:, None], m, axis=1)
    excluded = {
        "customers not reachable (consent, unsubscribed, contact policy)": int((~reachable).sum())
    }
    impressions = state.offer_allowed(list(offers.offer_id))
    excluded["pairs over the offer impression limit"] = int((eligible & ~impressions).sum())
    eligible &= impressions
    context = {"channel": c.channel, "hour": at.hour, "weekday": at.weekday()}
    masks: dict[str, np.ndarray] = {}
    texts = [(c.eligibility, slice(None), "campaign.eligibility")]
    texts += [
        (r, slice(j, j + 1), f"offers.{o}.eligibility")
        for j, (r, o) in enumerate(zip(offers.rule, offers.offer_id, strict=True))
        if r
    ]
    known = scorer.known()
    for text, cols, where in texts:
        if not text:
            continue
        rule = compile_rule(text, where=where)
        per_offer = any(name.startswith(_PER_OFFER) for name in rule.names)
        full = np.ones((n, m), dtype=bool)
        for j in range(m)[cols]:  # a loop over the offers a rule covers
            if not per_offer and j > (cols.start or 0):  # customer-level: the same for all
                full[:, j] = full[:, cols.start or 0]
                continue
            values: dict[str, Any] = {
                col: scorer.column(col, j) for col in rule.names if col in known
            }
            values.update({k: v for k, v in context.items() if k in rule.names})
            full[:, j] = rule.evaluate(values, n)
        masks[text] = full
        excluded[f"pairs excluded by {where}: {text}"] = int((eligible & ~full).sum())
        eligible &= full
    reporter.finish()
    # the batch scores only the customers it may write to; an explanation scores everyone asked
    scored = None if customer_ids is not None else np.flatnonzero(eligible.any(axis=1) & ~holdout)
    weights = list(c.position_weights[: c.slots]) or position_weights(model, scorer, c.slots)
    p = scorer.score(model, rows=scored, reporter=reporter, dtype=np.float32)
    scorer.forget_coded()  # 0.7 GB at 5M customers, not needed once scored
    response = str(manifest.params.get("response", "click"))
    conversion = None if response == "purchase" else click_to_purchase(warehouse, offers, as_of)
    slots = np.where(holdout, 0, c.slots).astype(np.int64)
    return DayInputs(
        send_ts=at,
        customer_ids=ids,
        offers=offers,
        p_response=p,
        conversion=conversion,
        eligible=eligible,
        slots=slots,
        holdout=holdout,
        arm=arm,
        novel=scorer.novel(),
        contact=state,
        customers=scorer.customers,
        response=response,
        model_version=manifest.name,
        excluded=excluded,
        rule_masks=masks,
        position_weights=weights,
    )


def position_weights(model: Any, scorer: PairScorer, slots: int) -> list[float]:
    """The model's response in slot j relative to slot 1, on a sample of the day's pairs."""
    if "slot" not in model.features_:
        return [1.0] * slots
    X = scorer.sample(model, 5_000)
    col = list(model.features_).index("slot")
    base = None
    out = []
    for j in range(1, slots + 1):  # a loop over slots
        X[:, col] = j
        p = float(model.predict_proba_matrix(X)[:, 1].mean())
        base = base or max(p, 1e-12)
        out.append(p / base)
    return out
