"""The simulated retailer as an environment: any policy's decisions in, one day's outcomes out.

``RetailEnvironment.step(day, decisions)`` is the single code path for outcomes, used by
:func:`nextbest.simulate.simulate` and by any closed-loop experiment. Days go one at a time
from 0; the environment remembers what carries over between days: e-mails of the last seven
days (fatigue), unsubscribes, the stock left in each sale, returns still to come.

A day, in order: e-mails are sent at noon UTC to the members in the decisions; opens, clicks
and unsubscribes follow (:mod:`nextbest.simulate.response` has the probabilities); every
click is a visit to the clicked sale, members also visit on their own initiative; a visit
shows a product, may leave a cart behind (7% of visits that do not buy) and may end in a
purchase (preceded by its add-to-cart). Stock is finite: a purchase beyond a sale's capacity
becomes a ``waitlist`` event. 10% of purchases come back as returns 3 to 10 days later. Members
visit a store with probability 0.3% a day, 40% less when it rains in their region; the
weather is in the event's attributes. A referred member's signup brings a ``referral`` event
for her referrer. Members are active (visits, stores, e-mails) from the day after they join.
Two members in five use the app, the others the web site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from nextbest.errors import DataError
from nextbest.simulate import response as rm
from nextbest.simulate.config import SimConfig
from nextbest.simulate.decisions import DayDecisions, read_decisions
from nextbest.simulate.events import DayEvents, channel_code
from nextbest.simulate.truth import Expected, Mail, day_truth
from nextbest.simulate.world import PRODUCTS_PER_SALE, REGIONS, World, build_world

__all__ = ["DayOutcome", "Expected", "RetailEnvironment"]

_S = 1_000_000  # microseconds
_H = 3600 * _S
_APP, _WEB = channel_code("app"), channel_code("web")


@dataclass
class DayOutcome:
    """One day's canonical decisions and events, and the truth behind them.

    Attributes
    ----------
    decisions
        The day's decisions as canonical rows (ids assigned where the policy gave none).
    events
        The day's events as canonical rows, numbered on from the previous day's.
    truth
        One row per decision, in the same order: ``decision_id``, ``p_click`` (the e-mail is
        opened and this sale clicked), ``p_buy_after_click`` (the visit from that click ends
        in a purchase); null for a control.
    emails
        One row per member addressed (mailed or held out): ``decision_id`` (of slot 1, or of
        the control row), ``customer_id``, ``date``, ``effect_type``, ``mailed``, ``p_open``,
        ``p_buy_if_mailed`` and ``p_buy_if_not`` (probability of buying that day with this
        e-mail and without any), ``uplift`` (their difference: the true effect of the
        e-mail). ``p_open``, ``p_buy_if_mailed`` and ``uplift`` are null for a control, whose
        e-mail was never written.
    expected
        Sums of the true probabilities of the day.
    """

    decisions: pa.Table
    events: pa.Table
    truth: pa.Table
    emails: pa.Table
    expected: Expected


@dataclass
class _Returns:
    member: np.ndarray
    sale: np.ndarray
    product: np.ndarray
    quantity: np.ndarray
    amount: np.ndarray


class RetailEnvironment:
    """The simulated retailer, as an environment any policy can act in, one day at a time.

    Parameters
    ----------
    config
        The simulation settings; the world is drawn from ``config.seed``.
    world
        A world already drawn (to share one between environments, or to alter it in a test).
    """

    def __init__(self, config: SimConfig, world: World | None = None) -> None:
        self.config = config
        self.world = world or build_world(config)
        self.reset()

    def reset(self) -> None:
        """Back to day 0: no e-mails sent, no unsubscribes, full stock, ids numbered from 0."""
        n = self.world.n
        self.day = 0
        self.sent_recently = np.zeros((7, n), dtype=bool)
        self.unsubscribed = np.zeros(n, dtype=bool)
        self.stock = self.world.sale_capacity.copy()
        self.pending_returns: dict[int, list[_Returns]] = {}
        self.next_decision = 0
        self.next_event = 0

    def _eligible_mask(self, day: int) -> np.ndarray:
        w = self.world
        return (w.signup_day < day) & w.consent["email"] & ~self.unsubscribed

    def eligible(self, day: int) -> np.ndarray:
        """Members (indices) who may be e-mailed on ``day``: joined, consenting, subscribed."""
        return np.flatnonzero(self._eligible_mask(day))

    def open_sales(self, day: int) -> np.ndarray:
        """Sales (indices) open at noon of ``day``; ``world.sale_ids`` gives their offer ids."""
        return self.world.open_sales(day)

    def step(self, day: int, decisions: Any) -> DayOutcome:
        """Carry out ``day``'s decisions and return what happened.

        ``decisions`` is an Arrow table or a pandas DataFrame of ``customer_id``,
        ``offer_id`` and ``slot`` rows (see :mod:`nextbest.simulate.decisions`); days must
        come in order from 0.
        """
        if day != self.day or day >= self.config.days:
            raise DataError(
                f"step: expected day {self.day} (days run 0 to {self.config.days - 1}, one at "
                f"a time), got day {day}; call reset() to start again"
            )
        w = self.world
        plan = read_decisions(w, day, decisions, self._eligible_mask(day), self.next_decision)
        self.next_decision += plan.numbered
        rng = np.random.default_rng([self.config.seed, 1, day])
        ev = DayEvents()
        emails = self._emails(day, plan, rng, ev)
        outcome = self._site(day, plan, emails, rng, ev)
        self._stores_and_referrals(day, rng, ev)
        events = ev.table(w, plan.table.column("decision_id").combine_chunks(), self.next_event)
        self.next_event += events.num_rows
        self.day += 1
        return DayOutcome(plan.table, events, *outcome)

    def _emails(
        self, day: int, plan: DayDecisions, rng: np.random.Generator, ev: DayEvents
    ) -> Mail:
        """Send, open, click, unsubscribe; returns the e-mail arrays the rest of the day uses."""
        w = self.world
        noon = w.day_start_us(day) + 12 * _H
        rows = np.flatnonzero(plan.sale >= 0)
        member, sale, slot = plan.member[rows], plan.sale[rows], plan.slot[rows]
        sent, inv = np.unique(member, return_inverse=True)
        by_slot = np.lexsort((slot, inv))
        first = np.full(len(sent), -1)
        first[inv[by_slot][::-1]] = rows[by_slot][::-1]  # the row of each e-mail's first slot
        fatigue = self.sent_recently[:, sent].sum(axis=0)
        p_open = rm.open_probability(w, sent, fatigue)
        opened = rng.random(len(sent)) < p_open
        open_ts = noon + np.minimum(rng.exponential(3 * _H, len(sent)), 11 * _H).astype(np.int64)
        p_click = rm.click_probability(w, member, sale, slot)
        clicked = opened[inv] & (rng.random(len(rows)) < p_click)
        click_ts = open_ts[inv] + rng.integers(10 * _S, 1800 * _S, len(rows))
        p_unsub = rm.unsubscribe_probability(w, sent, fatigue)
        unsub = rng.random(len(sent)) < p_unsub
        ev.add("email_sent", sent, np.full(len(sent), noon), channel="email", decision=first)
        ev.add("email_open", sent[opened], open_ts[opened], channel="email", decision=first[opened])
        ev.add(
            "email_click",
            member[clicked],
            click_ts[clicked],
            channel="email",
            sale=sale[clicked],
            decision=rows[clicked],
        )
        ev.add(
            "unsubscribe",
            sent[unsub],
            open_ts[unsub] + 60 * _S,
            channel="email",
            decision=first[unsub],
        )
        self.unsubscribed[sent[unsub]] = True
        self.sent_recently[day % 7] = False
        self.sent_recently[day % 7, sent] = True
        return Mail(
            rows, member, sale, inv, sent, first, p_open, p_click, p_unsub, clicked, click_ts
        )

    def _site(
        self,
        day: int,
        plan: DayDecisions,
        e: Mail,
        rng: np.random.Generator,
        ev: DayEvents,
    ) -> tuple[pa.Table, pa.Table, Expected]:
        """Visits, views, carts, purchases, waitlists, returns; and the day's truth."""
        w = self.world
        day0 = w.day_start_us(day)
        sent, inv, clicked = e.sent, e.inv, e.clicked
        mailed = np.zeros(w.n, dtype=bool)
        mailed[sent] = True
        no_click = np.exp(np.bincount(inv, np.log1p(-e.p_click), minlength=len(sent)))
        click_any = np.zeros(w.n)
        click_any[sent] = e.p_open * (1 - no_click)
        joined = np.flatnonzero(w.signup_day < day)
        own = rm.organic_visit_probability(w, joined, mailed[joined], click_any[joined])
        visitor = joined[rng.random(len(joined)) < own]
        open_now = w.open_sales(day)
        gumbel = rng.gumbel(size=(len(visitor), len(open_now)))
        chosen = open_now[np.argmax(rm.choice_utility(w, visitor, open_now) + gumbel, axis=1)]
        v_member = np.concatenate([e.member[clicked], visitor])
        v_sale = np.concatenate([e.sale[clicked], chosen])
        opened_today = w.sale_day[chosen] == day  # open from noon
        own_ts = day0 + rng.integers(np.where(opened_today, 12 * _H, 6 * _H), 23 * _H)
        v_ts = np.concatenate([e.click_ts[clicked] + 5 * _S, own_ts])
        v_decision = np.concatenate([e.rows[clicked], np.full(len(visitor), -1)])
        v_channel = np.where(v_member % 5 < 2, _APP, _WEB)
        product = rng.integers(0, PRODUCTS_PER_SALE, len(v_member))
        on = {"sale": v_sale, "channel": v_channel, "decision": v_decision}
        ev.add("visit", v_member, v_ts, **on)
        ev.add("view", v_member, v_ts + 20 * _S, product=product, **on)
        q = rm.conversion_probability(w, v_member, v_sale, mailed[v_member])
        buys = rng.random(len(v_member)) < q
        carts = buys | (rng.random(len(v_member)) < 0.07)
        ev.add(
            "add_to_cart",
            v_member[carts],
            v_ts[carts] + 120 * _S,
            product=product[carts],
            quantity=np.ones(int(carts.sum()), dtype=np.int64),
            **{k: v[carts] for k, v in on.items()},
        )
        order = np.flatnonzero(buys)
        order = order[rng.permutation(len(order))]
        in_stock = self._take_stock(v_sale[order])
        got, missed = order[in_stock], order[~in_stock]
        quantity = np.where(rng.random(len(got)) < 0.1, 2, 1)
        unit = w.product_price[v_sale[got], product[got]] * (1 - w.sale_discount[v_sale[got]])
        amount = np.round(unit * quantity, 2)
        ev.add(
            "purchase",
            v_member[got],
            v_ts[got] + 360 * _S,
            product=product[got],
            quantity=quantity,
            amount=amount,
            **{k: v[got] for k, v in on.items()},
        )
        ev.add(
            "waitlist",
            v_member[missed],
            v_ts[missed] + 360 * _S,
            product=product[missed],
            **{k: v[missed] for k, v in on.items()},
        )
        self._returns(
            day, rng, ev, _Returns(v_member[got], v_sale[got], product[got], quantity, amount)
        )
        return day_truth(w, day, plan, e, joined, own, open_now, mailed)

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

    def _returns(self, day: int, rng: np.random.Generator, ev: DayEvents, bought: _Returns) -> None:
        """Schedule 10% of today's purchases to come back in 3-10 days; emit today's returns."""
        back = np.flatnonzero(rng.random(len(bought.member)) < 0.10)
        delay = rng.integers(3, 11, len(back))
        for d in np.unique(delay):  # a loop over at most eight delays
            pick = back[delay == d]
            self.pending_returns.setdefault(day + int(d), []).append(
                _Returns(*(getattr(bought, f)[pick] for f in _Returns.__dataclass_fields__))
            )
        day0 = self.world.day_start_us(day)
        for r in self.pending_returns.pop(day, []):
            ev.add(
                "return",
                r.member,
                day0 + rng.integers(9 * _H, 18 * _H, len(r.member)),
                channel="web",
                sale=r.sale,
                product=r.product,
                quantity=r.quantity,
                amount=r.amount,
            )

    def _stores_and_referrals(self, day: int, rng: np.random.Generator, ev: DayEvents) -> None:
        w = self.world
        day0 = w.day_start_us(day)
        joined = np.flatnonzero(w.signup_day < day)
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
            day0 + rng.integers(9 * _H, 19 * _H, len(store)),
            channel="store",
            attributes=pa.array(attrs, pa.string()),
        )
        new = np.flatnonzero((w.signup_day == day) & (w.referred_by >= 0))
        ts = w.signup_ts[new].astype("datetime64[us]").astype(np.int64)
        attrs = np.char.add(np.char.add('{"referred":"', w.customer_ids(new)), '"}')
        ev.add("referral", w.referred_by[new], ts, attributes=pa.array(attrs, pa.string()))
