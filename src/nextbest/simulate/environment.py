"""The response model: given one day's e-mail decisions from any policy, what happens.

``RetailEnvironment.step(day, decisions)`` is the single code path for outcomes, used by
:func:`nextbest.simulate.simulate` and by any closed-loop experiment. The model, per day:

- **E-mail.** A member sent an e-mail opens it with probability ``open_base x exp(-0.06 f)``,
  where ``f`` is the number of e-mails she received in the previous seven days (fatigue). Each
  featured sale in slot ``s`` is clicked, given an open, with probability
  ``0.035 x exp(0.6 a + 1.5 nu x new - 0.35 (s - 1) + 1.5 (discount - 0.45))`` (``a``: taste
  affinity, ``nu``: novelty taste, ``new``: the brand is a new designer), capped at 0.5.
  Unsubscribes: ``0.001 x (1 + 0.15 f)``, tripled for sleeping dogs.
- **Visits.** Every click is a visit to the clicked sale; members also visit on their own with
  probability ``activity`` a day (x0.6 for a sleeping dog who was mailed that day), choosing a
  sale by affinity.
- **Purchases.** A visit converts with probability
  ``sigmoid(-5.2 + 0.7 a + 1.5 (discount - 0.45) - 0.8 (price_sensitivity - 0.5) + type term)``
  where the type term is +1.6 for sure things, +1.8 for persuadables contacted that day (-0.6
  otherwise), -1.0 for sleeping dogs contacted that day (+0.5 otherwise), -1.2 for lost causes.
  A purchase is preceded by an add-to-cart; 7% of other visits leave a cart behind. Stock is
  finite: a purchase beyond a sale's capacity becomes a waitlist event. 10% of purchases come
  back as returns 3 to 10 days later.
- **Stores.** Members visit a store with probability 0.3% a day, 40% less when it rains in
  their region; the weather is in the event's attributes.
- **Referrals.** A referred member's signup day brings a referral event for her referrer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nextbest.simulate.config import SimConfig
from nextbest.simulate.world import EFFECT_TYPES, REGIONS, World, build_world

__all__ = ["DayOutcome", "RetailEnvironment"]

_US = 1_000_000
_HOUR = 3600 * _US
SURE, PERSUADABLE, SLEEPING, LOST = range(len(EFFECT_TYPES))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class DayOutcome:
    """One day's events (canonical columns but ``event_id``) and the truth behind them."""

    events: pa.Table
    truth: pa.Table  # one row per decision: true open and click probabilities


@dataclass
class _Events:
    """Columns of events under construction, one array per column."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, kind: str, member: np.ndarray, ts: np.ndarray, **cols: np.ndarray) -> None:
        if len(member):
            self.parts.append(
                {"type": np.full(len(member), kind), "member": member, "ts": ts, **cols}
            )


class RetailEnvironment:
    """The simulated retailer as an environment that any policy can act in."""

    def __init__(self, config: SimConfig, world: World | None = None) -> None:
        self.config = config
        self.world = world or build_world(config)
        self.reset()

    def reset(self) -> None:
        """Back to the first day: no e-mails sent, no unsubscribes, full stock."""
        n = self.world.n
        self.sent_recently = np.zeros((7, n), dtype=bool)
        self.unsubscribed = np.zeros(n, dtype=bool)
        self.stock = self.world.sale_capacity.copy()
        self.pending_returns: dict[int, list[dict[str, np.ndarray]]] = {}

    def eligible(self, day: int) -> np.ndarray:
        """Members who may be e-mailed at noon of ``day``: joined, consented, subscribed."""
        w = self.world
        return np.flatnonzero((w.signup_day < day) & w.consent["email"] & ~self.unsubscribed)

    def open_sales(self, day: int) -> np.ndarray:
        return self.world.open_sales(day)

    def step(self, day: int, decisions: pa.Table) -> DayOutcome:
        """Outcomes of ``day`` given its decisions (customer_id, offer_id, slot, decision_id)."""
        w = self.world
        rng = np.random.default_rng([self.config.seed, 1, day])
        noon = int(np.datetime64(w.day_start(day).replace(tzinfo=None), "us").astype(np.int64))
        noon += 12 * _HOUR
        day0 = noon - 12 * _HOUR
        member = _member_index(decisions.column("customer_id"))
        sale = _sale_index(decisions.column("offer_id"), self.config.sales_per_day)
        slot = decisions.column("slot").to_numpy(zero_copy_only=False).astype(np.int64)
        ev = _Events()
        sent, inverse = np.unique(member, return_inverse=True)
        fatigue = self.sent_recently[:, sent].sum(axis=0)
        p_open = w.open_base[sent] * np.exp(-0.06 * fatigue)
        opened = rng.random(len(sent)) < p_open
        open_ts = noon + np.minimum(rng.exponential(3 * _HOUR, len(sent)), 11.9 * _HOUR).astype(
            np.int64
        )
        aff = _pair_affinity(w, member, sale)
        new = w.brand_new[w.sale_brand[sale]]
        p_click = np.minimum(
            0.5,
            0.035
            * np.exp(
                0.6 * aff
                + 1.5 * w.novelty[member] * new
                - 0.35 * (slot - 1)
                + 1.5 * (w.sale_discount[sale] - 0.45)
            ),
        )
        clicked = opened[inverse] & (rng.random(len(member)) < p_click)
        click_ts = open_ts[inverse] + rng.integers(10 * _US, 1800 * _US, len(member))
        decision_row = np.arange(len(member))
        ev.add(
            "email_sent",
            sent,
            np.full(len(sent), noon),
            channel=np.full(len(sent), "email"),
            decision=_first_row(inverse, len(sent)),
        )
        ev.add(
            "email_open",
            sent[opened],
            open_ts[opened],
            channel=np.full(opened.sum(), "email"),
            decision=_first_row(inverse, len(sent))[opened],
        )
        ev.add(
            "email_click",
            member[clicked],
            click_ts[clicked],
            sale=sale[clicked],
            channel=np.full(clicked.sum(), "email"),
            decision=decision_row[clicked],
        )
        p_unsub = 0.001 * (1 + 0.15 * fatigue) * np.where(w.effect_type[sent] == SLEEPING, 3, 1)
        unsub = rng.random(len(sent)) < p_unsub
        ev.add(
            "unsubscribe",
            sent[unsub],
            open_ts[unsub] + 60 * _US,
            channel=np.full(unsub.sum(), "email"),
        )
        self.unsubscribed[sent[unsub]] = True
        self.sent_recently[day % 7] = False
        self.sent_recently[day % 7, sent] = True

        contacted = np.zeros(w.n, dtype=bool)
        contacted[sent] = True
        # Visits: from clicks, and on members' own initiative.
        joined = np.flatnonzero(w.signup_day <= day)
        p_visit = w.activity[joined] * np.where(
            contacted[joined] & (w.effect_type[joined] == SLEEPING), 0.6, 1.0
        )
        visitor = joined[rng.random(len(joined)) < p_visit]
        open_now = w.open_sales(day)
        gumbel = rng.gumbel(size=(len(visitor), len(open_now)))
        chosen = open_now[np.argmax(w.affinity(visitor, open_now) + gumbel, axis=1)]
        v_member = np.concatenate([member[clicked], visitor])
        v_sale = np.concatenate([sale[clicked], chosen])
        v_ts = np.concatenate(
            [
                click_ts[clicked] + 5 * _US,
                day0 + rng.integers(6 * _HOUR, 24 * _HOUR - _US, len(visitor)),
            ]
        )
        v_decision = np.concatenate([decision_row[clicked], np.full(len(visitor), -1)])
        app = (v_member % 5) < 2  # two members in five use the app
        v_channel = np.where(app, "app", "web")
        ev.add("visit", v_member, v_ts, sale=v_sale, channel=v_channel, decision=v_decision)
        product = rng.integers(0, 4, len(v_member))
        ev.add(
            "view",
            v_member,
            v_ts + 20 * _US,
            sale=v_sale,
            product=product,
            channel=v_channel,
            decision=v_decision,
        )
        q = _sigmoid(
            -5.2
            + 0.7 * _pair_affinity(w, v_member, v_sale)
            + 1.5 * (w.sale_discount[v_sale] - 0.45)
            - 0.8 * (w.price_sensitivity[v_member] - 0.5)
            + _type_term(w.effect_type[v_member], contacted[v_member])
        )
        buys = rng.random(len(v_member)) < q
        abandons = ~buys & (rng.random(len(v_member)) < 0.07)
        carts = buys | abandons
        ev.add(
            "add_to_cart",
            v_member[carts],
            v_ts[carts] + 120 * _US,
            sale=v_sale[carts],
            product=product[carts],
            channel=v_channel[carts],
            decision=v_decision[carts],
            quantity=np.ones(carts.sum(), dtype=np.int64),
        )
        order = np.flatnonzero(buys)
        order = order[rng.permutation(len(order))]
        in_stock = self._take_stock(v_sale[order])
        got, missed = order[in_stock], order[~in_stock]
        quantity = np.where(rng.random(len(got)) < 0.1, 2, 1)
        price = w.sale_price[v_sale[got]] * (1 - w.sale_discount[v_sale[got]])
        amount = np.round(price * rng.uniform(0.7, 1.3, len(got)) * quantity, 2)
        ev.add(
            "purchase",
            v_member[got],
            v_ts[got] + 360 * _US,
            sale=v_sale[got],
            product=product[got],
            channel=v_channel[got],
            decision=v_decision[got],
            quantity=quantity,
            amount=amount,
        )
        ev.add(
            "waitlist",
            v_member[missed],
            v_ts[missed] + 360 * _US,
            sale=v_sale[missed],
            product=product[missed],
            channel=v_channel[missed],
        )
        back = rng.random(len(got)) < 0.10
        delay = rng.integers(3, 11, back.sum())
        for d in np.unique(delay):
            pick = np.flatnonzero(back)[delay == d]
            self.pending_returns.setdefault(day + int(d), []).append(
                {
                    "member": v_member[got][pick],
                    "sale": v_sale[got][pick],
                    "product": product[got][pick],
                    "quantity": quantity[pick],
                    "amount": amount[pick],
                }
            )
        for r in self.pending_returns.pop(day, []):
            ev.add(
                "return",
                r["member"],
                day0 + rng.integers(9 * _HOUR, 18 * _HOUR, len(r["member"])),
                sale=r["sale"],
                product=r["product"],
                quantity=r["quantity"],
                amount=r["amount"],
                channel=np.full(len(r["member"]), "web"),
            )
        self._stores_and_referrals(day, day0, joined, rng, ev)
        truth = pa.table(
            {
                "decision_id": decisions.column("decision_id"),
                "p_open": p_open[inverse],
                "p_click": p_open[inverse] * p_click,
                "effect_type": np.asarray(EFFECT_TYPES)[w.effect_type[member]],
            }
        )
        return DayOutcome(_assemble(w, ev, decisions.column("decision_id")), truth)

    def _take_stock(self, sales: np.ndarray) -> np.ndarray:
        """Which purchases (in order) find stock left; stock is used up as they go."""
        ok = np.zeros(len(sales), dtype=bool)
        if not len(sales):
            return ok
        order = np.argsort(sales, kind="stable")
        s = sales[order]
        first = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
        rank = np.arange(len(s)) - np.repeat(first, np.diff(np.r_[first, len(s)]))
        ok[order] = rank < self.stock[s]
        np.subtract.at(self.stock, sales[ok], 1)
        return ok

    def _stores_and_referrals(
        self, day: int, day0: int, joined: np.ndarray, rng: np.random.Generator, ev: _Events
    ) -> None:
        w = self.world
        rain = w.rain[day][w.region[joined]]
        store = joined[rng.random(len(joined)) < 0.003 * np.where(rain, 0.6, 1.0)]
        weather = np.where(w.rain[day][w.region[store]], "rain", "sun")
        region = np.asarray(REGIONS)[w.region[store]]
        attrs = np.char.add(
            np.char.add(np.char.add('{"store":"ST-', region), '","weather":"'),
            np.char.add(weather, '"}'),
        )
        ev.add(
            "store_visit",
            store,
            day0 + rng.integers(9 * _HOUR, 19 * _HOUR, len(store)),
            channel=np.full(len(store), "store"),
            attributes=attrs,
        )
        new = np.flatnonzero((w.signup_day == day) & (w.referred_by >= 0))
        referrer = w.referred_by[new]
        ts = w.signup_ts[new].astype("datetime64[us]").astype(np.int64)
        attrs = np.char.add(np.char.add('{"referred":"', w.customer_ids(new)), '"}')
        ev.add("referral", referrer, ts, attributes=attrs)


def _type_term(kind: np.ndarray, contacted: np.ndarray) -> np.ndarray:
    term = np.select(
        [kind == SURE, kind == PERSUADABLE, kind == SLEEPING],
        [1.6, np.where(contacted, 1.8, -0.6), np.where(contacted, -1.0, 0.5)],
        default=-1.2,
    )
    return term


def _pair_affinity(w: World, member: np.ndarray, sale: np.ndarray) -> np.ndarray:
    item = w.brand_vec[w.sale_brand[sale]] + w.category_vec[w.sale_category[sale]]
    return np.einsum("ij,ij->i", w.taste[member], item) / np.sqrt(2.0 * w.taste.shape[1])


def _first_row(inverse: np.ndarray, n: int) -> np.ndarray:
    first = np.full(n, -1)
    rows = np.arange(len(inverse))[::-1]
    first[inverse[::-1]] = rows
    return first


def _member_index(ids: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(pc.utf8_slice_codeunits(ids, 1), pa.int64()).to_numpy() - 1


def _sale_index(ids: pa.ChunkedArray, per_day: int) -> np.ndarray:
    day = pc.cast(pc.utf8_slice_codeunits(ids, 1, 4), pa.int64()).to_numpy()
    k = pc.cast(pc.utf8_slice_codeunits(ids, 5), pa.int64()).to_numpy()
    return day * per_day + k


def _assemble(w: World, ev: _Events, decision_ids: pa.ChunkedArray) -> pa.Table:
    """Concatenate the day's events in time order, in canonical columns but the id."""
    cols = (
        "type",
        "member",
        "ts",
        "sale",
        "product",
        "channel",
        "decision",
        "quantity",
        "amount",
        "attributes",
    )
    fill = {
        "sale": -1,
        "product": -1,
        "decision": -1,
        "quantity": -1,
        "amount": np.nan,
        "attributes": None,
        "channel": None,
    }
    merged: dict[str, np.ndarray] = {}
    for c in cols:
        arrays = []
        for part in ev.parts:
            n = len(part["member"])
            arrays.append(
                part[c]
                if c in part
                else np.full(n, fill[c], dtype=object if fill[c] is None else None)
            )
        merged[c] = np.concatenate(arrays) if arrays else np.empty(0)
    order = np.lexsort((merged["member"], merged["ts"]))
    m = {c: v[order] for c, v in merged.items()}
    sale = m["sale"].astype(np.int64)
    has_sale = sale >= 0
    product = m["product"].astype(np.int64)
    has_product = has_sale & (product >= 0)
    offer = np.full(len(sale), None, dtype=object)
    offer[has_sale] = w.sale_ids(sale[has_sale])
    product_id = np.full(len(sale), None, dtype=object)
    product_id[has_product] = np.char.add(
        np.char.add("P", w.sale_ids(sale[has_product])),
        np.char.add("-", product[has_product].astype(str)),
    )
    decision = m["decision"].astype(np.int64)
    dec = np.asarray(decision_ids.to_numpy(zero_copy_only=False), dtype=object)
    decision_id = np.full(len(sale), None, dtype=object)
    decision_id[decision >= 0] = dec[decision[decision >= 0]] if len(dec) else []
    quantity = m["quantity"].astype(np.int64)
    return pa.table(
        {
            "customer_id": pa.array(w.customer_ids(m["member"].astype(np.int64)), pa.string()),
            "ts": pa.array(m["ts"].astype(np.int64), pa.timestamp("us", tz="UTC")),
            "type": pa.array(m["type"].astype(str), pa.string()),
            "product_id": pa.array(product_id, pa.string()),
            "offer_id": pa.array(offer, pa.string()),
            "channel": pa.array(m["channel"], pa.string()),
            "quantity": pa.array(quantity, pa.int64(), mask=quantity < 0),
            "amount": pa.array(
                m["amount"].astype(float), pa.float64(), mask=np.isnan(m["amount"].astype(float))
            ),
            "decision_id": pa.array(decision_id, pa.string()),
            "attributes": pa.array(m["attributes"], pa.string()),
        }
    )
