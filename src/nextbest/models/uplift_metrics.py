r"""How well an uplift model ranks customers: Qini and uplift curves, uplift at k, policy value.

Every function takes, for one treatment against the control, the outcome ``y``, the
treatment indicator ``t`` (1 treated, 0 control) and the model's ``score`` (its predicted
effect), all of length ``n``, from a randomised experiment. Rows are ranked by decreasing
score; ties keep their order in the input (a stable sort), so results are deterministic.

For the top ``k`` rows of the ranking (``k = 0, ..., n``) let ``N_t(k)``, ``N_c(k)`` be the
treated and control rows among them and ``Y_t(k)``, ``Y_c(k)`` the sums of their outcomes.

**Qini curve** (Radcliffe 2007, "Using control groups to target on predicted lift", DMA
Analytics Council): the incremental outcomes gained by treating the top ``k``,

.. math:: Q(k) = Y_t(k) - Y_c(k) \, N_t(k) / N_c(k) \qquad (Q(k) = Y_t(k) \text{ if } N_c(k) = 0),

plotted as ``q(k) = Q(k) / n`` against ``x = k / n``, both in ``[0, 1]`` scale.

**Qini coefficient**: the area between the Qini curve and the random-targeting line from
``(0, 0)`` to ``(1, q(n))`` (what targeting at random gains on average), by the trapezoid rule
on the ``n + 1`` points,

.. math:: \text{Qini} = \frac{1}{n} \sum_{k=1}^{n} \frac{q(k-1) + q(k)}{2} - \frac{q(n)}{2}
          = \frac{1}{n^2} \Big( \sum_{k=1}^{n} \frac{Q(k-1) + Q(k)}{2} - \frac{n \, Q(n)}{2}
          \Big).

It is in units of ``y`` per customer: 0 for a random ranking on average, positive when the
model puts the responders to treatment first.

**Uplift curve** (Gutierrez & Gérardy 2017, "Causal inference and uplift modelling: a review
of the literature", PMLR 67): the difference of response rates in the top ``k`` times the
rows in it,

.. math:: U(k) = \big( Y_t(k) / N_t(k) - Y_c(k) / N_c(k) \big) (N_t(k) + N_c(k)),

taken as 0 while either group is empty, plotted as ``U(k) / n`` against ``k / n``; **AUUC**
is the area under it by the same trapezoid rule (targeting at random gives about
``U(n) / (2n)``).

**Uplift at k**: ``Y_t(k) / N_t(k) - Y_c(k) / N_c(k)`` for ``k`` the fraction of ``n``
rounded half up.

**Policy value**: the mean outcome per customer if the top ``k`` were treated and the others
not, by inverse propensity weighting (Horvitz & Thompson 1952) with the known probability of
treatment ``p``: ``V = (1/n) sum_i y_i [t_i = pi_i] / P(t_i = pi_i) - cost k / n``, where
``pi_i`` is 1 for the top ``k`` and ``P(t_i = 1) = p``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nextbest.errors import DataError

__all__ = [
    "auuc",
    "policy_value",
    "qini_coefficient",
    "qini_curve",
    "random_qini",
    "uplift_at_k",
    "uplift_curve",
]


def _check(y: Any, treatment: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        y_ = np.asarray(y, dtype=np.float64).ravel()
        s_ = np.asarray(score, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DataError("y and score: expected numbers; got non-numeric values") from None
    t_ = np.asarray(treatment).ravel()
    if not len(y_) == len(t_) == len(s_):
        raise DataError(
            f"y, treatment and score: expected one value each per row, got {len(y_)}, "
            f"{len(t_)} and {len(s_)}; pass aligned arrays"
        )
    if not np.isin(t_, (0, 1)).all():
        raise DataError(
            "treatment: expected 1 (treated) or 0 (control) per row, got values such as "
            f"{t_[~np.isin(t_, (0, 1))][0]!r}; compare one arm with the control, e.g. "
            "(arm == 'mailed').astype(int) on the rows of those two arms"
        )
    t_ = t_.astype(np.int64)
    if t_.min() == t_.max():
        only = "treated" if t_[0] == 1 else "control"
        raise DataError(f"treatment: expected both treated and control rows, got only {only}")
    for name, v in (("y", y_), ("score", s_)):
        if np.isnan(v).any():
            raise DataError(
                f"{name}: expected no missing values, got {int(np.isnan(v).sum())} NaN; "
                "drop or fill those rows"
            )
    return y_, t_, s_


def _cumulative(
    y: Any, treatment: Any, score: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``Y_t, Y_c, N_t, N_c`` over the top ``k = 0..n`` of the ranking by decreasing score."""
    y_, t_, s_ = _check(y, treatment, score)
    order = np.argsort(-s_, kind="stable")
    y_, t_ = y_[order], t_[order]

    def cum(v: np.ndarray) -> np.ndarray:
        return np.r_[0.0, np.cumsum(v)]

    return cum(y_ * t_), cum(y_ * (1 - t_)), cum(t_), cum(1 - t_)


def _area(curve: np.ndarray) -> float:
    """Trapezoid area of ``n + 1`` equally spaced points over ``[0, 1]``."""
    return float((curve[:-1] + curve[1:]).sum() / (2 * (len(curve) - 1)))


def qini_curve(y: Any, treatment: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve ``(k / n, Q(k) / n)`` for ``k = 0..n`` (Radcliffe 2007; see module docs)."""
    yt, yc, nt, nc = _cumulative(y, treatment, score)
    ratio = np.divide(nt, nc, out=np.zeros_like(nt), where=nc > 0)
    n = len(yt) - 1
    return np.arange(n + 1) / n, (yt - yc * ratio) / n


def qini_coefficient(y: Any, treatment: Any, score: Any) -> float:
    """Area between the Qini curve and the random-targeting line, per customer (module docs)."""
    _, q = qini_curve(y, treatment, score)
    return _area(q) - float(q[-1]) / 2


def random_qini(y: Any, treatment: Any, n_draws: int = 200, random_state: int = 0) -> np.ndarray:
    """Qini coefficients of ``n_draws`` random rankings: what a model must beat.

    A model's Qini coefficient above the 95th percentile of these is better than targeting at
    random at the 5% level. Draws are seeded with ``random_state``.
    """
    rng = np.random.default_rng(random_state)
    n = len(np.asarray(y))
    return np.array([qini_coefficient(y, treatment, rng.permutation(n)) for _ in range(n_draws)])


def uplift_curve(y: Any, treatment: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Uplift curve ``(k / n, U(k) / n)`` (Gutierrez & Gérardy 2017; see module docs)."""
    yt, yc, nt, nc = _cumulative(y, treatment, score)
    both = (nt > 0) & (nc > 0)
    rate_t = np.divide(yt, nt, out=np.zeros_like(yt), where=both)
    rate_c = np.divide(yc, nc, out=np.zeros_like(yc), where=both)
    n = len(yt) - 1
    return np.arange(n + 1) / n, (rate_t - rate_c) * (nt + nc) / n


def auuc(y: Any, treatment: Any, score: Any) -> float:
    """Area under the uplift curve, per customer (module docs)."""
    _, u = uplift_curve(y, treatment, score)
    return _area(u)


def _top(fraction: float, n: int) -> int:
    if not 0 < fraction <= 1:
        raise DataError(f"fraction: expected a share in (0, 1], got {fraction!r}")
    return int(np.floor(fraction * n + 0.5))


def uplift_at_k(y: Any, treatment: Any, score: Any, fraction: float) -> float:
    """Treated minus control mean outcome among the top ``fraction`` of the ranking."""
    yt, yc, nt, nc = _cumulative(y, treatment, score)
    k = _top(fraction, len(yt) - 1)
    if nt[k] == 0 or nc[k] == 0:
        raise DataError(
            f"uplift_at_k: expected treated and control rows in the top {fraction:.0%} "
            f"({k} rows), got {int(nt[k])} treated and {int(nc[k])} control; use a larger "
            "fraction"
        )
    return float(yt[k] / nt[k] - yc[k] / nc[k])


def policy_value(
    y: Any,
    treatment: Any,
    score: Any,
    fraction: float,
    propensity: Any = None,
    cost: float = 0.0,
) -> float:
    """Mean outcome per customer of treating the top ``fraction``, net of cost (module docs).

    Parameters
    ----------
    y, treatment, score
        Outcomes, 1/0 treated/control, predicted effects, from a randomised experiment.
    fraction
        Share of customers treated, those of highest score.
    propensity
        Known probability of treatment, one number or one per row; ``None`` takes the
        treated share of the rows.
    cost
        Cost per treated customer, in units of ``y``.
    """
    y_, t_, s_ = _check(y, treatment, score)
    n = len(y_)
    k = _top(fraction, n)
    p = np.broadcast_to(
        np.asarray(t_.mean() if propensity is None else propensity, dtype=np.float64), (n,)
    )
    if not ((p > 0) & (p < 1)).all():
        raise DataError("propensity: expected probabilities of treatment in (0, 1)")
    policy = np.zeros(n, dtype=np.int64)
    policy[np.argsort(-s_, kind="stable")[:k]] = 1
    weight = np.where(policy == 1, 1 / p, 1 / (1 - p)) * (t_ == policy)
    return float((weight * y_).sum() / n - cost * k / n)
