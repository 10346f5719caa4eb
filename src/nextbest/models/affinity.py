"""Customer-item affinity from implicit feedback: alternating least squares (ALS).

Views, clicks, carts and purchases are implicit feedback: they say what a customer looked at,
not what she disliked. Following Hu, Koren & Volinsky (2008, "Collaborative filtering for
implicit feedback datasets", ICDM), each customer ``u`` and item ``i`` (a product, a brand or
a category) with summed event weight ``r_ui`` give a preference ``p_ui = 1 if r_ui > 0 else 0``
and a confidence ``c_ui = 1 + alpha * r_ui``; customer and item factors ``x_u``, ``y_i``
minimise ``sum_ui c_ui (p_ui - x_u . y_i)^2 + lambda (sum_u |x_u|^2 + sum_i |y_i|^2)`` over
all pairs, observed or not, by alternating least squares (``implicit``'s CPU solver, with
conjugate-gradient steps; Takács, Pilászy & Tikk 2011). The affinity of a customer for an item
is ``x_u . y_i``: a ranking score, not a probability. An unknown customer or item scores NaN:
cold start is left to the caller, who sees that the model does not know, not a made-up number.

:func:`interactions` reads the weighted interactions from the warehouse (events weighted by
type, as in :data:`~nextbest.features.decision_features.AFFINITY_WEIGHTS`: view 1, e-mail
click 2, add to cart 3, purchase 5).

:func:`evaluate_affinity` measures top-``k`` recommendations on a later test window against a
popularity baseline (items ranked by their total training weight), the usual protocol for
implicit feedback (Hu et al. 2008; Rendle et al. 2009, "BPR"):

- customers evaluated: known in training, with at least one relevant item;
- relevant items (binary relevance): the items of the model's catalogue (seen in training)
  that she interacted with in the test window. With ``exclude_seen=True`` (the default) the
  items she had already interacted with in training are neither recommended nor relevant, so
  the measure is of discovery, as in a random split of pairs, where test pairs are never
  training pairs; with ``exclude_seen=False`` both keep them (repeat interest counts);
- ``recall@k``: relevant items among her top ``k``, over her number of relevant items;
- ``nDCG@k`` (Järvelin & Kekäläinen 2002): ``sum 1 / log2(rank + 1)`` over the relevant items
  at ranks ``1..k``, over the same sum for an ideal ranking (``min(k, relevant)`` hits first);
- both averaged over the customers evaluated, with equal weight per customer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError, DataError, NotFittedError
from nextbest.features.decision_features import AFFINITY_WEIGHTS

__all__ = [
    "AFFINITY_LEVELS",
    "AffinityEvaluation",
    "AffinityModel",
    "evaluate_affinity",
    "interactions",
]

AFFINITY_LEVELS = ("product", "brand", "category")
_COLUMNS = ("customer_id", "item", "weight")
_CELLS = 1 << 22  # scores computed at once (customers x items), to bound memory


class AffinityModel(BaseEstimator):  # type: ignore[misc]
    """Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) over ``implicit``.

    Parameters
    ----------
    factors
        Dimension of the customer and item factors. The defaults (8 factors, regularisation
        50, alpha 1) were chosen on the simulator's sparse brand data (2.6 brands a customer):
        next-week recall@10 0.216 against 0.099 for 32, 0.05 and 10.
    regularization
        ``lambda``, the L2 penalty on the factors.
    iterations
        Alternating least-squares sweeps (customers, then items).
    alpha
        Confidence scaling: an interaction of weight ``r`` has confidence ``1 + alpha * r``.
    weights
        Event type -> weight, used when :meth:`fit` is given events (a ``type`` column)
        rather than weights; ``None``: view 1, email_click 2, add_to_cart 3, purchase 5.
    random_state
        Seed of the initial factors.
    num_threads
        Threads of the solver (0: all cores).

    Attributes
    ----------
    customers_, items_
        The ids of the rows of ``user_factors_`` and of ``item_factors_``, sorted.
    user_factors_, item_factors_
        The factors, float32 arrays of shape ``(n, factors)``.
    user_items_
        The summed training weights, a CSR matrix customers x items.
    """

    def __init__(
        self,
        *,
        factors: int = 8,
        regularization: float = 50.0,
        iterations: int = 15,
        alpha: float = 1.0,
        weights: Mapping[str, float] | None = None,
        random_state: int = 0,
        num_threads: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.weights = weights
        self.random_state = random_state
        self.num_threads = num_threads

    def _validate(self) -> dict[str, float]:
        name = type(self).__name__
        for param in ("factors", "iterations"):
            value = getattr(self, param)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name}.{param}: expected an integer >= 1, got {value!r}")
        if not _is_int(self.num_threads) or self.num_threads < 0:
            raise ConfigError(
                f"{name}.num_threads: expected an integer >= 0 (0: all cores), "
                f"got {self.num_threads!r}"
            )
        for param in ("regularization", "alpha"):
            value = getattr(self, param)
            if not _is_number(value) or value < 0:
                raise ConfigError(f"{name}.{param}: expected a number >= 0, got {value!r}")
        return _event_weights(self.weights, f"{name}.weights")

    def fit(self, interactions: pd.DataFrame) -> AffinityModel:
        """Fit the factors to the interactions.

        Parameters
        ----------
        interactions
            One row per customer and item (or per event): ``customer_id``, ``item`` and either
            ``weight`` (>= 0; repeated pairs are summed) or ``type`` (an event type, weighted
            by ``weights``; types without a weight are left out). Pairs whose weight sums to
            0 are no interaction. :func:`interactions` builds this frame from the warehouse.

        Returns
        -------
        AffinityModel
            ``self``, fitted.
        """
        from implicit.cpu.als import AlternatingLeastSquares

        weights = self._validate()
        pairs = _pairs(interactions, weights)
        c_codes, customers = pd.factorize(pairs.customer_id, sort=True)
        i_codes, items = pd.factorize(pairs["item"], sort=True)
        shape = (len(customers), len(items))
        r = sp.csr_matrix((pairs.weight.to_numpy(np.float32), (c_codes, i_codes)), shape=shape)
        confidence = r.copy()
        confidence.data = (1.0 + self.alpha * confidence.data).astype(np.float32)
        # implicit takes the matrix's values as the confidences c_ui themselves (its own alpha
        # only multiplies them), so c = 1 + alpha * r is built here and its alpha left at 1.
        with threadpool_limits(1, "blas"):  # implicit's advice: BLAS threads fight its own
            als = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=1.0,
                iterations=self.iterations,
                random_state=self.random_state,
                num_threads=self.num_threads,
            )
            als.fit(confidence, show_progress=False)
        self.customers_ = np.asarray(customers, dtype=object)
        self.items_ = np.asarray(items, dtype=object)
        self._customer_index = pd.Index(self.customers_)
        self._item_index = pd.Index(self.items_)
        self.user_factors_ = np.ascontiguousarray(als.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(als.item_factors, dtype=np.float32)
        self.user_items_ = r
        return self

    def _check_fitted(self, call: str) -> None:
        if not hasattr(self, "user_factors_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(interactions) before "
                f"{call}"
            )

    def customer_rows(self, customer_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Row of each customer in ``user_factors_``; -1 for a customer unknown in training."""
        self._check_fitted("customer_rows")
        return np.asarray(self._customer_index.get_indexer(_ids(customer_ids, "customer_ids")))

    def item_rows(self, items: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Row of each item in ``item_factors_``; -1 for an item unknown in training."""
        self._check_fitted("item_rows")
        return np.asarray(self._item_index.get_indexer(_ids(items, "items")))

    def score(
        self, customer_ids: Sequence[Any] | np.ndarray, items: Sequence[Any] | np.ndarray
    ) -> np.ndarray:
        """Affinity ``x_u . y_i`` of each customer for the item beside it (NaN if unknown).

        ``customer_ids`` and ``items`` are aligned, of one length.
        """
        self._check_fitted("score")
        u, i = self.customer_rows(customer_ids), self.item_rows(items)
        if len(u) != len(i):
            raise DataError(
                f"score: expected customer_ids and items of one length (aligned pairs), got "
                f"{len(u)} and {len(i)}"
            )
        known = (u >= 0) & (i >= 0)
        out = np.full(len(u), np.nan)
        out[known] = np.einsum(
            "ij,ij->i", self.user_factors_[u[known]], self.item_factors_[i[known]]
        )
        return out

    def recommend(
        self, customer_ids: Sequence[Any] | np.ndarray, k: int = 10, *, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Each known customer's ``k`` items of highest affinity.

        Parameters
        ----------
        customer_ids
            The customers; those unknown in training get no rows (cold start is the
            caller's).
        k
            Items per customer (fewer when fewer items are left to recommend).
        exclude_seen
            Leave out the items the customer interacted with in training.

        Returns
        -------
        pandas.DataFrame
            ``customer_id``, ``item``, ``rank`` (1 is the best), ``score``; customers in the
            order given, ranks ascending.
        """
        self._check_fitted("recommend")
        k = _check_k(k)
        ids = _ids(customer_ids, "customer_ids")
        rows = self.customer_rows(ids)
        keep = np.flatnonzero(rows >= 0)
        frames = []
        for chunk in _chunks(len(keep), len(self.items_)):
            u = rows[keep[chunk]]
            scores = self.user_factors_[u] @ self.item_factors_.T
            if exclude_seen:
                _mask(scores, self.user_items_[u])
            top = _top_k(scores, k)
            best = np.take_along_axis(scores, top, axis=1)
            ok = np.isfinite(best)
            frames.append(
                pd.DataFrame(
                    {
                        "customer_id": np.repeat(ids[keep[chunk]], top.shape[1])[ok.ravel()],
                        "item": self.items_[top[ok]],
                        "rank": np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)[ok],
                        "score": best[ok].astype(np.float64),
                    }
                )
            )
        if not frames:
            return pd.DataFrame(
                {
                    "customer_id": pd.Series(dtype=object),
                    "item": pd.Series(dtype=object),
                    "rank": pd.Series(dtype=np.int64),
                    "score": pd.Series(dtype=np.float64),
                }
            )
        return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class AffinityEvaluation:
    """Top-``k`` ranking quality of a model and of the popularity baseline (module docstring).

    Attributes
    ----------
    k
        Recommendations per customer.
    n_customers
        Customers evaluated: known in training, with at least one relevant test item.
    recall, ndcg
        The model's mean recall@k and nDCG@k.
    popularity_recall, popularity_ndcg
        The same for items ranked by their total training weight.
    """

    k: int
    n_customers: int
    recall: float
    ndcg: float
    popularity_recall: float
    popularity_ndcg: float


def evaluate_affinity(
    model: AffinityModel,
    train: pd.DataFrame,
    test: pd.DataFrame,
    k: int = 10,
    *,
    exclude_seen: bool = True,
) -> AffinityEvaluation:
    """Recall@k and nDCG@k of ``model`` and of popularity on a later window.

    Parameters
    ----------
    model
        An :class:`AffinityModel` fitted on ``train``.
    train, test
        Interactions (as for :meth:`AffinityModel.fit`, with a ``weight`` column) before and
        in the test window. ``train`` gives what each customer had seen and the popularity.
    k
        Recommendations per customer.
    exclude_seen
        Measure discovery (the default): training items are neither recommended nor
        relevant. ``False``: both keep them.

    Returns
    -------
    AffinityEvaluation
        The two rankings' metrics over the same customers.
    """
    if not isinstance(model, AffinityModel):
        raise ConfigError(
            f"model: expected an AffinityModel fitted on train, got {type(model).__name__}"
        )
    model._check_fitted("evaluate_affinity")
    k = _check_k(k)
    none: dict[str, float] = {}
    seen = _matrix(model, _pairs(train, none, "train"))
    relevant = _matrix(model, _pairs(test, none, "test"))
    relevant.data[:] = 1.0
    if exclude_seen:
        relevant = relevant - relevant.multiply(seen > 0)
        relevant.eliminate_zeros()
    customers = np.flatnonzero(relevant.getnnz(axis=1) > 0)
    if len(customers) == 0:
        raise DataError(
            "test: expected at least one customer known in training with a relevant test item "
            f"(an item of the training catalogue{' she had not seen' if exclude_seen else ''}), "
            "got none; choose a longer test window"
        )
    popularity = np.asarray(seen.sum(axis=0)).ravel()
    order = np.argsort(-popularity, kind="stable")  # ties: item order, deterministically
    pop_score = np.empty(len(order), dtype=np.float32)
    pop_score[order] = -np.arange(len(order), dtype=np.float32)
    totals = np.zeros(4)
    for chunk in _chunks(len(customers), len(model.items_)):
        u = customers[chunk]
        rel = relevant[u].toarray() > 0
        model_scores = model.user_factors_[u] @ model.item_factors_.T
        pop_scores = np.broadcast_to(pop_score, model_scores.shape).copy()
        if exclude_seen:
            _mask(model_scores, seen[u])
            _mask(pop_scores, seen[u])
        totals[:2] += _ranking_sums(_top_k(model_scores, k), rel, k)
        totals[2:] += _ranking_sums(_top_k(pop_scores, k), rel, k)
    means = totals / len(customers)
    return AffinityEvaluation(
        k=k,
        n_customers=len(customers),
        recall=float(means[0]),
        ndcg=float(means[1]),
        popularity_recall=float(means[2]),
        popularity_ndcg=float(means[3]),
    )


def interactions(
    warehouse: Warehouse,
    level: str,
    start: datetime | None = None,
    end: datetime | None = None,
    weights: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Weighted interactions per customer and product, brand or category, from the warehouse.

    Parameters
    ----------
    warehouse
        The nextbest warehouse.
    level
        ``product`` (the event's ``product_id``), ``brand`` or ``category`` (the event's
        product's, or its offer's when the event names no product or the product has none).
    start, end
        Events with ``start <= ts < end`` (``None``: unbounded).
    weights
        Event type -> weight (``None``: view 1, email_click 2, add_to_cart 3, purchase 5);
        events of other types, and anonymous events, are left out.

    Returns
    -------
    pandas.DataFrame
        ``customer_id``, ``item``, ``weight`` (summed, > 0), sorted by customer and item:
        what :meth:`AffinityModel.fit` takes.
    """
    if level not in AFFINITY_LEVELS:
        raise ConfigError(f"level: expected one of {', '.join(AFFINITY_LEVELS)}, got {level!r}")
    table = _event_weights(weights, "weights")
    positive = {t: w for t, w in table.items() if w > 0}
    ev = warehouse.table("events")
    ev = ev.filter(ev.customer_id.notnull(), ev.type.isin(tuple(positive) or ("",)))
    if start is not None:
        ev = ev.filter(ev.ts >= _ts(start))
    if end is not None:
        ev = ev.filter(ev.ts < _ts(end))
    weight = ibis.cases(*((ev.type == t, w) for t, w in positive.items()), else_=0.0)
    ev = ev.select("customer_id", "product_id", "offer_id", _weight=weight)
    if level == "product":
        lines = ev.filter(ev.product_id.notnull()).select(
            "customer_id", "_weight", item=ev.product_id
        )
    else:
        products = warehouse.table("products")
        products = products.select(_pid=products.product_id, _p_item=products[level])
        offers = warehouse.table("offers")
        offers = offers.select(_oid=offers.offer_id, _o_item=offers[level])
        joined = ev.left_join(products, ev.product_id == products._pid)
        joined = joined.left_join(offers, joined.offer_id == offers._oid)
        lines = joined.select(
            "customer_id", "_weight", item=ibis.coalesce(joined._p_item, joined._o_item)
        )
        lines = lines.filter(lines.item.notnull())
    out = lines.group_by(["customer_id", "item"]).aggregate(weight=lines._weight.sum())
    frame = out.order_by(["customer_id", "item"]).to_pandas()
    if frame.empty:
        window = f"between {start or 'the first event'} and {end or 'the last'}"
        raise DataError(
            f"no {level} interactions ({', '.join(positive) or 'no event type'} by known "
            f"customers) {window}; load events or choose other dates"
        )
    frame["weight"] = frame.weight.astype(np.float64)
    return frame


def _ts(value: datetime) -> ir.TimestampValue:
    return ibis.literal(value, type="timestamp('UTC')")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and bool(np.isfinite(value))
    )


def _event_weights(weights: Mapping[str, float] | None, name: str) -> dict[str, float]:
    if weights is None:
        return dict(AFFINITY_WEIGHTS)
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(
            f"{name}: expected a non-empty mapping event type -> weight, e.g. "
            f"{dict(AFFINITY_WEIGHTS)}, or None, got {weights!r}"
        )
    for event, w in weights.items():
        if not _is_number(w) or w < 0:
            raise ConfigError(f"{name}[{event!r}]: expected a number >= 0, got {w!r}")
    return {str(t): float(w) for t, w in weights.items()}


def _pairs(frame: Any, weights: dict[str, float], name: str = "interactions") -> pd.DataFrame:
    """``frame`` checked, weighted and summed: one row per pair, weight > 0."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(
            f"{name}: expected a pandas DataFrame with columns {', '.join(_COLUMNS)}, got "
            f"{type(frame).__name__}"
        )
    wanted = "weight" if "weight" in frame.columns or not weights else "type"
    missing = [c for c in ("customer_id", "item", wanted) if c not in frame.columns]
    if missing:
        also = " (or type, an event type to weigh)" if weights else ""
        raise DataError(
            f"{name}: expected columns customer_id, item and weight{also}, got "
            f"{', '.join(map(str, frame.columns)) or 'none'}; missing {', '.join(missing)}"
        )
    if frame.empty:
        raise DataError(
            f"{name}: expected at least one interaction, got an empty frame; widen the "
            "window or load events"
        )
    for col in ("customer_id", "item"):
        bad = frame[col].isna().to_numpy()
        if bad.any():
            raise DataError(
                f"{name}.{col}: expected a value on every row, got a missing value at row "
                f"{int(np.argmax(bad))}; drop such rows"
            )
    if wanted == "weight":
        try:
            weight = pd.to_numeric(frame.weight).to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{name}.weight: expected numbers >= 0, got non-numbers") from None
        bad = ~(np.isfinite(weight) & (weight >= 0))
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(
                f"{name}.weight: expected a finite number >= 0, got {float(weight[first])!r} at "
                f"row {first}; implicit feedback has no negative interactions"
            )
    else:
        weight = frame["type"].map(weights).fillna(0.0).to_numpy(dtype=np.float64)
    pairs = pd.DataFrame(
        {"customer_id": frame.customer_id.to_numpy(), "item": frame["item"].to_numpy()}
    )
    pairs["weight"] = weight
    pairs = pairs.groupby(["customer_id", "item"], sort=True, as_index=False).weight.sum()
    pairs = pairs[pairs.weight > 0]
    if pairs.empty:
        raise DataError(
            f"{name}: expected at least one pair of weight > 0, got {len(frame)} rows of "
            "weight 0; check the weights"
        )
    return pairs.reset_index(drop=True)


def _ids(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-d sequence of ids, got shape {arr.shape}")
    return arr


def _check_k(k: Any) -> int:
    if not _is_int(k) or k < 1:
        raise ConfigError(f"k: expected an integer >= 1, got {k!r}")
    return int(k)


def _matrix(model: AffinityModel, pairs: pd.DataFrame) -> sp.csr_matrix:
    """``pairs`` on the model's rows and columns (pairs it does not know are left out)."""
    u = model.customer_rows(pairs.customer_id.to_numpy())
    i = model.item_rows(pairs["item"].to_numpy())
    known = (u >= 0) & (i >= 0)
    shape = (len(model.customers_), len(model.items_))
    return sp.csr_matrix((pairs.weight.to_numpy()[known], (u[known], i[known])), shape=shape)


def _chunks(n_rows: int, n_items: int) -> Iterator[slice]:
    step = max(1, _CELLS // max(n_items, 1))
    for first in range(0, n_rows, step):
        yield slice(first, min(first + step, n_rows))


def _mask(scores: np.ndarray, seen: sp.csr_matrix) -> None:
    """Set the scores of the items in ``seen`` (rows aligned with ``scores``) to -inf."""
    coo = seen.tocoo()
    scores[coo.row, coo.col] = -np.inf


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` highest scores per row, best first (-inf ones included last)."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(k), scores.shape).copy()
    part.sort(axis=1)  # ties: the lower column first, whatever argpartition returned
    best = np.take_along_axis(scores, part, axis=1)
    return np.take_along_axis(part, np.argsort(-best, axis=1, kind="stable"), axis=1)


def _ranking_sums(top: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Sums over rows of recall@k and nDCG@k of the rankings ``top`` (boolean relevance)."""
    hits = np.take_along_axis(relevant, top, axis=1)
    n_relevant = relevant.sum(axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discount[: top.shape[1]]).sum(axis=1)
    ideal = np.cumsum(discount)[np.minimum(n_relevant, k) - 1]
    return np.array([(hits.sum(axis=1) / n_relevant).sum(), (dcg / ideal).sum()])
