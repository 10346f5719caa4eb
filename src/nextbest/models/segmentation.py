"""Purposeful segmentation: clusters of customers on the features a purpose names.

A segmentation is declared in ``nextbest.toml`` for a purpose, with the customer 360 columns it
uses (see :mod:`nextbest.features.customer360`)::

    [segmentations.engagement]
    purpose = "match e-mail pressure to how members engage"
    features = ["open_rate_90", "click_rate_90", "visits_90", "monetary_365"]
    method = "kmeans"      # or "gmm" (Gaussian mixture)
    # k = 4                # else chosen: silhouette for k-means, BIC for mixtures

Missing values (a rate with no e-mail sent) are filled with the column's median; features are
standardised; k-means (k-means++ starts) or a Gaussian mixture is fitted with a fixed
``random_state``, so segments are stable from run to run. Segments are numbered by size, 0
being the largest. Category and brand shares (:mod:`nextbest.features.shares`) are not
360 columns, but a segmentation may name them, ``share_category_<category>`` or
``share_brand_<brand>``: each is the customer's share of purchase lines in that category
(brand) over the 365 days before the date, null for members who bought nothing (so filled
with the median).

A profile gives each segment's size, share, value (mean ``monetary_365``),
the mean of each feature, and what sets it apart: the features furthest from the average, in
standard deviations of the whole population.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from nextbest.config import Segmentation
from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError, NotFittedError
from nextbest.features import SHARE_LEVELS, customer_features, preference_shares, share_columns

__all__ = ["SegmentationResult", "Segmenter", "run_segmentation"]


class Segmenter:
    """Scaled clustering with k chosen by silhouette (k-means) or BIC (mixture).

    Hyperparameters are stored as given and checked in ``fit``; learned state ends in ``_``.
    """

    def __init__(
        self,
        method: str = "kmeans",
        k: int | None = None,
        k_min: int = 2,
        k_max: int = 8,
        sample: int = 5_000,
        random_state: int = 0,
    ) -> None:
        self.method = method
        self.k = k
        self.k_min = k_min
        self.k_max = k_max
        self.sample = sample
        self.random_state = random_state

    def _model(self, k: int) -> KMeans | GaussianMixture:
        if self.method == "kmeans":
            return KMeans(n_clusters=k, n_init=4, random_state=self.random_state)
        return GaussianMixture(
            n_components=k, covariance_type="full", n_init=2, random_state=self.random_state
        )

    def fit(self, X: pd.DataFrame) -> Segmenter:
        if self.method not in ("kmeans", "gmm"):
            raise ConfigError(f"method: expected 'kmeans' or 'gmm', got {self.method!r}")
        if len(X) <= max(self.k or self.k_max, 2):
            raise ConfigError(
                f"segmentation needs more customers than segments; got {len(X)} customers"
            )
        self.medians_ = X.median().fillna(0.0)
        self.scaler_ = StandardScaler().fit(X.fillna(self.medians_))
        Z = self.scaler_.transform(X.fillna(self.medians_))
        rng = np.random.default_rng(self.random_state)
        pick = rng.choice(len(Z), min(self.sample, len(Z)), replace=False)
        self.scores_: dict[int, float] = {}
        if self.k is None:
            for k in range(self.k_min, self.k_max + 1):
                model = self._model(k).fit(Z)
                if self.method == "kmeans":
                    self.scores_[k] = float(silhouette_score(Z[pick], model.predict(Z[pick])))
                else:
                    self.scores_[k] = float(-model.bic(Z))
        self.k_ = self.k or max(self.scores_, key=lambda k: self.scores_[k])
        self.model_ = self._model(self.k_).fit(Z)
        sizes = np.bincount(self.model_.predict(Z), minlength=self.k_)
        self.order_ = np.argsort(np.argsort(-sizes, kind="stable"))  # 0 = largest segment
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise NotFittedError("Segmenter is not fitted yet; call fit(X) first")
        Z = self.scaler_.transform(X.fillna(self.medians_))
        return np.asarray(self.order_[self.model_.predict(Z)])


@dataclass
class SegmentationResult:
    """The segment of every customer, a profile per segment, and how k was chosen."""

    name: str
    purpose: str
    as_of: datetime
    k: int
    scores: dict[int, float]
    labels: pd.DataFrame  # customer_id, segment
    profiles: pd.DataFrame


def run_segmentation(
    warehouse: Warehouse, name: str, spec: Segmentation, as_of: datetime
) -> SegmentationResult:
    """Fit the segmentation ``name`` on the customer 360 as of ``as_of`` and profile it."""
    data = customer_features(warehouse, as_of).to_pandas()
    data = _with_shares(warehouse, name, spec, as_of, data)
    numeric = list(data.select_dtypes("number").columns)
    bad = [f for f in spec.features if f not in numeric]
    if bad:
        raise ConfigError(
            f"segmentations.{name}.features: {', '.join(map(repr, bad))} is not a numeric "
            f"customer 360 column; expected some of {', '.join(numeric)}, or "
            "share_category_<category> / share_brand_<brand>"
        )
    X = data[list(spec.features)].astype(float)
    model = Segmenter(spec.method, spec.k, k_max=spec.k_max, random_state=spec.random_state).fit(X)
    labels = model.predict(X)
    mean, sd = X.mean(), X.std(ddof=0).replace(0, np.nan)
    value = data["monetary_365"].astype(float)
    rows = []
    for seg in range(model.k_):
        mask = labels == seg
        means = X[mask].mean()
        z = ((means - mean) / sd).fillna(0.0)
        apart = z.abs().sort_values(ascending=False).index[:3]
        rows.append(
            {
                "segment": seg,
                "customers": int(mask.sum()),
                "share": float(mask.mean()),
                "value": float(value[mask].mean()),
                "apart": ", ".join(f"{f} {z[f]:+.1f} sd" for f in apart),
                **{f: float(means[f]) for f in spec.features},
            }
        )
    return SegmentationResult(
        name,
        spec.purpose,
        as_of,
        model.k_,
        model.scores_,
        pd.DataFrame({"customer_id": data.customer_id, "segment": labels}),
        pd.DataFrame(rows),
    )


def _with_shares(
    warehouse: Warehouse, name: str, spec: Segmentation, as_of: datetime, data: pd.DataFrame
) -> pd.DataFrame:
    """Add the ``share_<level>_<value>`` columns that the segmentation names (opt-in)."""
    for level in SHARE_LEVELS:
        prefix = f"share_{level}_"
        wanted = [f[len(prefix) :] for f in spec.features if f.startswith(prefix)]
        if not wanted:
            continue
        long = preference_shares(warehouse, as_of, level)
        found = long.select("value").distinct().to_pyarrow()["value"].to_pylist()
        unknown = sorted(set(wanted) - set(found))
        if unknown:
            known = ", ".join(sorted(map(str, found))[:20]) or "none"
            raise ConfigError(
                f"segmentations.{name}.features: {', '.join(prefix + v for v in unknown)} "
                f"names a {level} no customer bought in the 365 days before "
                f"{as_of:%Y-%m-%d}; expected one of: {known}"
            )
        wide = share_columns(warehouse, as_of, level, values=wanted).to_pandas()
        data = data.merge(wide, on="customer_id", how="left")
    return data
