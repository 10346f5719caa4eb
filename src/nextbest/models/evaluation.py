"""Quality of predicted probabilities on held-out data: ranking, fit and calibration.

- ``auc``: area under the ROC curve (scikit-learn's ``roc_auc_score``);
- ``log_loss`` and ``brier`` (mean squared error of the probability);
- ``ece``: expected calibration error, ``sum_b n_b / n * |mean(y)_b - mean(p)_b|`` over ``bins``
  bins of equal count in ``p`` (Naeini et al. 2015, equal-mass variant, which stays stable
  when most probabilities are small, as response rates are);
- ``base_rate`` and ``mean_prediction``: observed and predicted rates.

:func:`calibration_table` gives the bins themselves, for a calibration plot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from nextbest.errors import DataError

__all__ = ["ProbabilityMetrics", "calibration_table", "probability_metrics"]


@dataclass(frozen=True)
class ProbabilityMetrics:
    """Held-out quality of predicted probabilities (see the module docstring)."""

    n: int
    base_rate: float
    mean_prediction: float
    auc: float
    log_loss: float
    brier: float
    ece: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if y.shape != p.shape or y.ndim != 1:
        raise DataError(
            f"outcomes and probabilities must be 1-d arrays of one length, got shapes "
            f"{y.shape} and {p.shape}"
        )
    if len(y) == 0:
        raise DataError("no rows to evaluate: the held-out set is empty")
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"outcomes must be 0 or 1, got {y[~np.isin(y, (0.0, 1.0))][0]!r}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise DataError("probabilities must lie in [0, 1] with no NaN")
    return y, p


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Equal-count bins of ``p``: rows, mean predicted and observed rate per bin."""
    y, p = _check(y, p)
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(bins, len(p)))
    return pd.DataFrame(
        {
            "bin": np.arange(len(groups)),
            "n": [len(g) for g in groups],
            "predicted": [p[g].mean() for g in groups],
            "observed": [y[g].mean() for g in groups],
        }
    )


def probability_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> ProbabilityMetrics:
    """AUC, log loss, Brier score and calibration error of ``p`` against outcomes ``y``."""
    y, p = _check(y, p)
    if y.min() == y.max():
        raise DataError(
            f"the held-out outcomes are all {int(y[0])}: AUC needs both responses and "
            "non-responses; hold out more days"
        )
    table = calibration_table(y, p, bins)
    ece = float((table.n / len(y) * (table.observed - table.predicted).abs()).sum())
    eps = 1e-15
    return ProbabilityMetrics(
        n=len(y),
        base_rate=float(y.mean()),
        mean_prediction=float(p.mean()),
        auc=float(roc_auc_score(y, p)),
        log_loss=float(log_loss(y, np.clip(p, eps, 1 - eps), labels=[0, 1])),
        brier=float(brier_score_loss(y, p)),
        ece=ece,
    )
