"""The truth behind one simulated day: the probabilities that generated what was observed.

:func:`day_truth` computes, from :mod:`nextbest.simulate.response`, the true click and
purchase probabilities of every decision, the true probability of buying with and without
each member's e-mail (the true effect of the e-mail), and the day's sums of true
probabilities (:class:`Expected`), from which the expected aggregate rates of a run follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from nextbest.simulate import response as rm
from nextbest.simulate.decisions import DayDecisions
from nextbest.simulate.world import EFFECT_TYPES, World

__all__ = ["Expected", "Mail", "day_truth"]


@dataclass
class Expected:
    """Sums of true probabilities over a day (add days up with ``+=``): what rates should be.

    ``uplift`` and ``mailed`` are per effect type (``EFFECT_TYPES`` order): the summed true
    effect of the e-mails sent on the probability of buying that day, and the e-mails sent.
    """

    sends: int = 0
    opens: float = 0.0
    clicks: float = 0.0
    unsubscribes: float = 0.0
    visits: float = 0.0
    purchases: float = 0.0
    uplift: np.ndarray = field(default_factory=lambda: np.zeros(len(EFFECT_TYPES)))
    mailed: np.ndarray = field(default_factory=lambda: np.zeros(len(EFFECT_TYPES)))

    def __iadd__(self, other: Expected) -> Expected:
        self.sends += other.sends
        self.opens += other.opens
        self.clicks += other.clicks
        self.unsubscribes += other.unsubscribes
        self.visits += other.visits
        self.purchases += other.purchases
        self.uplift = self.uplift + other.uplift
        self.mailed = self.mailed + other.mailed
        return self


@dataclass
class Mail:
    """The day's e-mails: per mailed decision row, and per member mailed (``sent``)."""

    rows: np.ndarray  # decision rows featuring a sale
    member: np.ndarray  # per row
    sale: np.ndarray  # per row
    inv: np.ndarray  # per row: position of its member in ``sent``
    sent: np.ndarray  # members mailed
    first: np.ndarray  # per member mailed: the row of her e-mail's first slot
    p_open: np.ndarray  # per member mailed
    p_click: np.ndarray  # per row, given an open
    p_unsub: np.ndarray  # per member mailed
    clicked: np.ndarray  # per row
    click_ts: np.ndarray  # per row


def _f32(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.float32), pa.float32(), mask=mask)


def day_truth(
    w: World,
    day: int,
    plan: DayDecisions,
    e: Mail,
    joined: np.ndarray,
    own: np.ndarray,
    open_now: np.ndarray,
    mailed: np.ndarray,
) -> tuple[pa.Table, pa.Table, Expected]:
    """True probabilities behind the day: per decision, per e-mail, and their sums.

    Parameters
    ----------
    w
        The world.
    day
        The day simulated.
    plan
        The day's decisions, checked.
    e
        The day's e-mails and their open and click probabilities.
    joined
        Members active that day (sorted indices); ``own`` their own-visit probabilities.
    open_now
        Sales open that day.
    mailed
        Mask over all members: e-mailed that day.

    Returns
    -------
    tuple
        The per-decision truth, the per-e-mail truth (see :class:`DayOutcome`), and the
        day's :class:`Expected` sums.
    """
    sent, inv, rows = e.sent, e.inv, e.rows
    alone, contacted = rm.organic_conversion(w, joined, open_now)
    q_click = rm.conversion_probability(w, e.member, e.sale, np.ones(len(rows), bool))
    p_click = e.p_open[inv] * e.p_click
    at = np.searchsorted(joined, sent)
    no_buy = np.exp(np.bincount(inv, np.log1p(-e.p_click * q_click), minlength=len(sent)))
    buy_mailed = rm.buy_probability(e.p_open, no_buy, own[at], contacted[at])
    buy_not = w.activity[sent] * alone[at]
    n = plan.table.num_rows
    blank = np.ones(n, dtype=bool)
    blank[rows] = False
    row_click, row_buy = np.zeros(n), np.zeros(n)
    row_click[rows] = p_click
    row_buy[rows] = q_click
    truth = pa.table(
        {
            "decision_id": plan.table.column("decision_id"),
            "p_click": _f32(row_click, blank),
            "p_buy_after_click": _f32(row_buy, blank),
        }
    )
    held_rows = np.flatnonzero(blank)
    held = plan.member[held_rows]
    held_not = w.activity[held] * alone[np.searchsorted(joined, held)]
    k, m = len(sent), len(held)
    is_mailed = np.r_[np.ones(k, bool), np.zeros(m, bool)]
    who = np.r_[sent, held]
    emails = pa.table(
        {
            "decision_id": plan.table.column("decision_id").take(np.r_[e.first, held_rows]),
            "customer_id": pa.array(w.customer_ids(who), pa.string()),
            "date": pa.array(np.full(k + m, w.day_start(day).date()), pa.date32()),
            "effect_type": pa.array(np.asarray(EFFECT_TYPES)[w.effect_type[who]]),
            "mailed": is_mailed,
            "p_open": _f32(np.r_[e.p_open, np.zeros(m)], ~is_mailed),
            "p_buy_if_mailed": _f32(np.r_[buy_mailed, np.zeros(m)], ~is_mailed),
            "p_buy_if_not": _f32(np.r_[buy_not, held_not]),
            "uplift": _f32(np.r_[buy_mailed - buy_not, np.zeros(m)], ~is_mailed),
        }
    )
    kind = w.effect_type[sent]
    expected = Expected(
        sends=k,
        opens=float(e.p_open.sum()),
        clicks=float(p_click.sum()),
        unsubscribes=float(e.p_unsub.sum()),
        visits=float(own.sum() + p_click.sum()),
        purchases=float(
            np.sum(own * np.where(mailed[joined], contacted, alone)) + np.sum(p_click * q_click)
        ),
        uplift=np.bincount(kind, buy_mailed - buy_not, minlength=len(EFFECT_TYPES)),
        mailed=np.bincount(kind, minlength=len(EFFECT_TYPES)).astype(float),
    )
    return truth, emails, expected
