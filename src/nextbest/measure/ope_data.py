"""Logs for off-policy evaluation: Open Bandit files, and a workspace's decision log.

- :func:`read_open_bandit` reads an Open Bandit Dataset log (``random/men/men.csv``; Saito et
  al. 2021) with ``pandas.read_csv(path, index_col=0)``, as OBP does: each row (impression) is
  its own context, the action is ``item_id``, the position ``position``, the reward ``click``
  and the logged propensity ``propensity_score``, the probability of the item in that position.
- :func:`decision_log` reads the warehouse's ``decisions`` (those showing an offer, with their
  ``propensity``) and their rewards: 1 when a response event (``click``: ``email_click``,
  ``push_open`` or ``click``; ``purchase``: ``purchase``) is linked to the decision by
  ``decision_id`` within ``window_hours`` of it. A context is one customer at one decision
  time (a slate); a control decision (no offer) is a context without rows. Ibis throughout.
- :func:`action_frequencies` and :func:`reward_table`: a context-free policy and a
  context-free reward model, per position and action, estimated from a log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import ibis
import numpy as np
import pandas as pd

from nextbest.data.warehouse import Warehouse
from nextbest.errors import DataError
from nextbest.features.decision_features import RESPONSES
from nextbest.measure.ope_feedback import LoggedFeedback

__all__ = [
    "DecisionLog",
    "action_frequencies",
    "decision_log",
    "read_open_bandit",
    "reward_table",
]

_OBD_COLUMNS = ("item_id", "position", "click", "propensity_score")


def read_open_bandit(path: Path | str) -> LoggedFeedback:
    """An Open Bandit log as feedback: one context per row, ``item_id`` as the action.

    ``n_actions`` is the number of items in the ``item_context.csv`` beside the log when there
    is one, else the largest ``item_id`` + 1. Item ids are shared by the ``random`` and
    ``bts`` logs of a campaign (only the hashed features differ), so actions match across them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such Open Bandit log; expected a file like random/men/men.csv")
    frame = pd.read_csv(path, index_col=0)
    missing = [c for c in _OBD_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; an Open Bandit log has "
            f"{', '.join(_OBD_COLUMNS)}"
        )
    items = path.parent / "item_context.csv"
    n_actions = len(pd.read_csv(items, index_col=0)) if items.exists() else None
    try:
        return LoggedFeedback(
            action=frame.item_id.to_numpy(),
            position=frame.position.to_numpy(),
            reward=frame.click.to_numpy(dtype=np.float64),
            propensity=frame.propensity_score.to_numpy(dtype=np.float64),
            n_actions=n_actions,
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def action_frequencies(feedback: LoggedFeedback) -> np.ndarray:
    """Positions x actions: how often each action was logged in each position (rows sum to 1).

    For a context-free logging policy this estimates its distribution over actions in each
    position, averaged over the period of the log (Open Bandit's Bernoulli Thompson sampling).
    Row ``k - 1`` is position ``k``; a position never logged has a row of zeros.
    """
    table = _cells(feedback, np.ones(len(feedback)))
    totals = table.sum(axis=1, keepdims=True)
    return np.divide(table, totals, out=np.zeros_like(table), where=totals > 0)


def reward_table(feedback: LoggedFeedback, prior: float = 20.0) -> np.ndarray:
    """Positions x actions: the mean reward of each action in each position, smoothed.

    ``(sum r + prior x m_k) / (n + prior)`` with ``m_k`` the mean reward of position ``k``:
    a context-free reward model for the direct and doubly robust methods (an action never
    logged in a position gets that position's mean).
    """
    if not prior >= 0:
        raise DataError(f"reward_table: prior must be a number >= 0, got {prior!r}")
    shown = _cells(feedback, np.ones(len(feedback)))
    earned = _cells(feedback, feedback.reward)
    n_k = shown.sum(axis=1, keepdims=True)
    mean_k = np.divide(
        earned.sum(axis=1, keepdims=True), n_k, out=np.zeros_like(n_k), where=n_k > 0
    )
    return (earned + prior * mean_k) / np.maximum(shown + prior, 1e-12)


def _cells(feedback: LoggedFeedback, values: np.ndarray) -> np.ndarray:
    width = feedback.n_actions or 0
    k = int(feedback.position.max()) if len(feedback) else 0
    flat = (feedback.position - 1) * width + feedback.action
    return np.bincount(flat, weights=values, minlength=k * width).reshape(k, width)


@dataclass(frozen=True)
class DecisionLog:
    """A workspace's logged decisions, ready for off-policy evaluation.

    Attributes
    ----------
    rows
        One row per decision that showed an offer: ``decision_id``, ``ts``, ``day`` (its UTC
        date), ``customer_id``, ``offer_id``, ``slot``, ``propensity``, ``reward`` and
        ``context`` (code into ``contexts``), in the order of ``feedback``.
    contexts
        One row per context (customer and decision time): ``customer_id``, ``ts``, ``day``,
        ``shown`` (offers shown: 0 for a control).
    offers
        The offer id of each action code.
    feedback
        The log as :class:`LoggedFeedback` (no evaluation policy yet).
    reward
        ``click`` or ``purchase``.
    """

    rows: pd.DataFrame
    contexts: pd.DataFrame
    offers: np.ndarray
    feedback: LoggedFeedback
    reward: str

    @property
    def on_policy_value(self) -> float:
        """The logging policy's own value: total reward per context."""
        return float(self.feedback.reward.sum() / max(self.feedback.n_contexts or 0, 1))


def _utc(value: datetime) -> ibis.Expr:
    return ibis.literal(value, type="timestamp('UTC')")


def decision_log(
    warehouse: Warehouse,
    *,
    reward: str = "click",
    start: datetime | None = None,
    end: datetime | None = None,
    window_hours: float = 24.0,
) -> DecisionLog:
    """The decisions logged from ``start`` to before ``end``, with their rewards."""
    if reward not in RESPONSES:
        raise DataError(f"reward must be one of {', '.join(RESPONSES)}, got {reward!r}")
    if not window_hours > 0:
        raise DataError(f"window_hours must be a number > 0, got {window_hours!r}")
    dec = warehouse.table("decisions")
    if start is not None:
        dec = dec.filter(dec.ts >= _utc(start))
    if end is not None:
        dec = dec.filter(dec.ts < _utc(end))
    ev = warehouse.table("events")
    ev = ev.filter(ev.type.isin(RESPONSES[reward]), ev.decision_id.notnull())
    window = ibis.interval(seconds=int(window_hours * 3600))
    keys = dec.select(hit_id="decision_id", hit_ts="ts")
    hits = keys.join(
        ev,
        [keys.hit_id == ev.decision_id, ev.ts >= keys.hit_ts, ev.ts <= keys.hit_ts + window],
    )
    hits = hits.select("hit_id").distinct().mutate(reward=ibis.literal(1.0))
    joined = dec.left_join(hits, dec.decision_id == hits.hit_id)
    frame = joined.select(
        "decision_id", "ts", "customer_id", "offer_id", "slot", "propensity", "reward"
    ).to_pandas()
    if frame.empty:
        span = f"from {start:%Y-%m-%d} " if start else ""
        span += f"to {end:%Y-%m-%d}" if end else ""
        raise DataError(
            f"no decisions logged {span or 'at all'}; load a decision log (or widen --from/--to)"
        )
    frame["reward"] = frame.reward.fillna(0.0).astype(np.float64)
    frame["ts"] = pd.to_datetime(frame.ts, utc=True)
    frame["day"] = frame.ts.dt.floor("D")
    frame = frame.sort_values(["ts", "customer_id", "slot"], kind="stable", ignore_index=True)
    codes, keys_ = pd.factorize(pd.MultiIndex.from_frame(frame[["customer_id", "ts"]]))
    frame["context"] = codes
    shown = frame.offer_id.notna()
    contexts = pd.DataFrame(
        {"customer_id": keys_.get_level_values(0), "ts": keys_.get_level_values(1)}
    )
    contexts["day"] = contexts.ts.dt.floor("D")
    contexts["shown"] = np.bincount(codes[shown.to_numpy()], minlength=len(contexts))
    rows = frame[shown].reset_index(drop=True)
    _check_rows(rows)
    action, offers = pd.factorize(rows.offer_id, sort=True)
    feedback = LoggedFeedback(
        action=action,
        position=rows.slot.to_numpy(dtype=np.int64),
        reward=rows.reward.to_numpy(),
        propensity=rows.propensity.to_numpy(dtype=np.float64),
        context=rows.context.to_numpy(dtype=np.int64),
        n_contexts=len(contexts),
        n_actions=len(offers),
    )
    return DecisionLog(rows, contexts, np.asarray(offers, dtype=object), feedback, reward)


def _check_rows(rows: pd.DataFrame) -> None:
    """Every decision that showed an offer has a propensity in (0, 1] and a slot >= 1."""
    if rows.empty:
        raise DataError("no logged decision shows an offer (only controls); nothing to evaluate")
    checks = (
        ("propensity", rows.propensity.isna(), "a logged probability under the policy"),
        ("propensity", ~rows.propensity.between(0, 1, inclusive="right"), "a number in (0, 1]"),
        ("slot", rows.slot.isna() | (rows.slot < 1), "a slot >= 1 (1 for the first)"),
    )
    for field, bad, expected in checks:  # a loop over three checks
        if bad.any():
            first = rows[bad].iloc[0]
            raise DataError(
                f"decisions.{field}: expected {expected} for every decision showing an offer, "
                f"got {first[field]!r} for {first.decision_id} ({int(bad.sum())} decisions); "
                "off-policy evaluation needs the logging policy's probability of each decision"
            )
