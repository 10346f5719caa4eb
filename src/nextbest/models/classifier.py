"""A calibrated gradient-boosted classifier that knows the features it was trained on.

LightGBM (Ke et al. 2017) ranks; a calibrator fitted on later, held-apart rows turns its
scores into probabilities that can be multiplied by a margin: isotonic regression
(Zadrozny & Elkan 2002) or Platt's sigmoid (Platt 1999). Calibrating on rows the trees never
saw is what keeps the probabilities honest; with time-ordered data those rows are the latest.
The same rows stop the boosting early: trees are added while they still lower the calibration
rows' log loss (patience ``early_stopping_rounds``), and the model keeps those up to the best.
On a simulated shop of 1M members the log loss of the next day was lowest at 75-100 trees and
rose after; stopped early the model kept 87 trees, not 300, and scored better on that day.

The classifier records its features (name and kind, numeric or categorical, with the
categories seen in training). Scoring data whose columns are missing or of another kind is a
:class:`~nextbest.errors.DataError` naming them, not a wrong score; unseen categories (a new
brand) score as missing, so the other features carry the prediction (cold start).
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from nextbest.errors import DataError, NotFittedError
from nextbest.models.forest import Forest

__all__ = ["CalibratedBoostedClassifier"]

_CALIBRATIONS = ("isotonic", "sigmoid", "none")


class CalibratedBoostedClassifier:
    """LightGBM classifier with a calibrator fitted on a separate, later set of rows.

    Parameters
    ----------
    calibration
        ``isotonic``, ``sigmoid`` (Platt) or ``none``.
    calibration_fraction
        When :meth:`fit` gets no calibration set, the last fraction of the rows (in the
        order given: pass time-ordered rows) is held apart to fit the calibrator.
    n_estimators, learning_rate, num_leaves, min_child_samples, reg_lambda
        LightGBM's hyperparameters (``n_estimators``: the most trees).
    early_stopping_rounds
        Stop adding trees when the calibration rows' log loss has not improved for this many;
        the model keeps the trees up to the best one (``best_iteration_``). ``0`` trains all
        ``n_estimators``; so does ``calibration='none'`` without calibration rows.
    random_state
        Seed of LightGBM's sampling.
    n_jobs
        LightGBM threads (``None``: LightGBM's default).
    """

    def __init__(
        self,
        *,
        calibration: str = "isotonic",
        calibration_fraction: float = 0.2,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 100,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int = 20,
        random_state: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.calibration = calibration
        self.calibration_fraction = calibration_fraction
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _validate(self) -> None:
        if self.calibration not in _CALIBRATIONS:
            raise DataError(
                f"calibration must be one of {', '.join(_CALIBRATIONS)}, got {self.calibration!r}"
            )
        if not 0 < self.calibration_fraction < 1:
            raise DataError(
                f"calibration_fraction must lie strictly between 0 and 1, got "
                f"{self.calibration_fraction!r}"
            )
        rounds = self.early_stopping_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise DataError(f"early_stopping_rounds must be an integer >= 0, got {rounds!r}")

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray | pd.Series,
        *,
        X_calibration: pd.DataFrame | None = None,
        y_calibration: np.ndarray | pd.Series | None = None,
    ) -> CalibratedBoostedClassifier:
        """Fit the trees on ``X``, ``y`` and the calibrator on the calibration rows."""
        self._validate()
        if not isinstance(X, pd.DataFrame):
            raise DataError(f"X must be a pandas DataFrame, got {type(X).__name__}")
        y = _labels(y, len(X), "y")
        if X_calibration is None:
            if self.calibration == "none":
                X_fit, y_fit, X_cal, y_cal = X, y, X.iloc[:0], y[:0]
            else:
                cut = round(len(X) * (1 - self.calibration_fraction))
                X_fit, y_fit, X_cal, y_cal = X.iloc[:cut], y[:cut], X.iloc[cut:], y[cut:]
        else:
            X_fit, y_fit = X, y
            X_cal = X_calibration
            y_cal = _labels(y_calibration, len(X_calibration), "y_calibration")
        if y_fit.min() == y_fit.max():
            raise DataError(
                f"every training label is {int(y_fit[0])}: a classifier needs both outcomes; "
                "train on more days or another response"
            )
        self.features_ = {
            c: ("categorical" if _is_categorical(X[c]) else "numeric") for c in X.columns
        }
        self.categories_ = {
            c: sorted(X_fit[c].dropna().astype(str).unique().tolist())
            for c, kind in self.features_.items()
            if kind == "categorical"
        }
        self.booster_ = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            reg_lambda=self.reg_lambda,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            deterministic=True,
            force_col_wise=True,
            verbose=-1,
        )
        if self.calibration != "none" and (len(X_cal) == 0 or y_cal.min() == y_cal.max()):
            raise DataError(
                f"the calibration rows ({len(X_cal)}) need both outcomes; give more rows "
                "or calibration='none'"
            )
        frame_cal = self._frame(X_cal)
        stopping: dict[str, Any] = {}
        if self.early_stopping_rounds > 0 and len(X_cal) and y_cal.min() < y_cal.max():
            stopping = {
                "eval_X": (frame_cal,),
                "eval_y": (y_cal,),
                "callbacks": [lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            }
        self.booster_.fit(self._frame(X_fit), y_fit, **stopping)
        # once stopped early, LightGBM predicts with the trees up to the best iteration only
        trees = self.booster_.booster_.num_trees()
        self.best_iteration_ = int(self.booster_.best_iteration_ or trees)
        self.calibrator_: Any = None
        if self.calibration != "none":
            raw = self._raw(frame_cal)
            if self.calibration == "isotonic":
                self.calibrator_ = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
                self.calibrator_.fit(raw, y_cal)
            else:
                self.calibrator_ = LogisticRegression(C=1e6).fit(_logit(raw)[:, None], y_cal)
        self.n_train_ = len(X_fit)
        self.n_calibration_ = len(X_cal)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(X, y) before "
                "predicting, or load a trained model from the model store"
            )

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """``X`` with the training columns, in order, categories coded as in training.

        Numbers go to LightGBM as float32: its histograms bin them anyway, and a 5M-row
        frame then takes half the memory.
        """
        missing = [c for c in self.features_ if c not in X.columns]
        if missing:
            raise DataError(
                f"the model was trained on {len(self.features_)} features; the data lacks "
                f"{', '.join(missing)}: rebuild the features with the same code, or retrain"
            )
        wrong = [
            f"{c} (expected {kind}, got {X[c].dtype})"
            for c, kind in self.features_.items()
            if kind == "numeric" and not pd.api.types.is_numeric_dtype(X[c])
        ]
        if wrong:
            raise DataError(f"features of the wrong kind: {', '.join(wrong)}")
        out = {}
        for c, kind in self.features_.items():
            if kind == "categorical":
                categories = self.categories_[c]
                out[c] = pd.Categorical.from_codes(_codes(X[c], categories), categories)
            else:
                out[c] = X[c].to_numpy(dtype=np.float32, na_value=np.nan)
        return pd.DataFrame(out, index=X.index)

    def _raw(self, frame: pd.DataFrame) -> np.ndarray:
        """The trees' probabilities of rows already put through :meth:`_frame`."""
        return np.asarray(self.booster_.predict_proba(frame))[:, 1]

    def encode(self, column: str, values: Any) -> np.ndarray:
        """One feature's values as the float32 the trees read: a category's code, else the number.

        Categories are coded by their place among those seen in training; unseen and missing
        ones are NaN, as in :meth:`predict_proba`. With :meth:`predict_proba_matrix`, this
        scores millions of rows without building a frame of them.
        """
        self._check_fitted()
        if self.features_.get(column) == "categorical":
            codes = _codes(values, self.categories_[column])
            return np.where(codes < 0, np.nan, codes).astype(np.float32)
        if isinstance(values, np.ndarray) and values.dtype == np.float32:
            return values  # already what the trees read: no copy of millions of rows
        return pd.Series(values).to_numpy(dtype=np.float32, na_value=np.nan)

    def predict_proba_matrix(self, X: np.ndarray) -> np.ndarray:
        """:meth:`predict_proba` on rows already coded by :meth:`encode`, columns in the order
        of ``features_``."""
        self._check_fitted()
        if X.ndim != 2 or X.shape[1] != len(self.features_):
            raise DataError(
                f"expected a matrix of {len(self.features_)} feature columns, got shape {X.shape}"
            )
        booster = self.booster_.booster_
        return self._calibrated(np.asarray(booster.predict(X, num_threads=self.n_jobs or 0)))

    def forest(self) -> Forest:
        """The trees as flat arrays (:class:`~nextbest.models.forest.Forest`), read once."""
        self._check_fitted()
        cached = self.__dict__.get("_forest")
        if cached is None or cached[0] is not self.booster_:
            cached = (self.booster_, Forest.from_booster(self.booster_.booster_))
            self.__dict__["_forest"] = cached
        return cached[1]

    def predict_proba_raw(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the positive class from the trees' raw scores.

        ``raw`` is the sum of leaf values (:meth:`Forest.raw`, or LightGBM's
        ``predict(raw_score=True)``); the link is the booster's sigmoid, as LightGBM's.
        """
        return self._calibrated(self.forest().probability(raw))[:, 1]

    def __getstate__(self) -> dict[str, Any]:
        # the flat forest is rebuilt from the booster when needed, never stored
        return {k: v for k, v in self.__dict__.items() if k != "_forest"}

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities, shape ``(n, 2)`` as in scikit-learn (column 1: positive)."""
        self._check_fitted()
        return self._calibrated(self._raw(self._frame(X)))

    def _calibrated(self, raw: np.ndarray) -> np.ndarray:
        if self.calibrator_ is None:
            p = raw
        elif isinstance(self.calibrator_, IsotonicRegression):
            p = self.calibrator_.predict(raw)
        else:
            p = self.calibrator_.predict_proba(_logit(raw)[:, None])[:, 1]
        p = np.clip(p, 0.0, 1.0)
        return np.column_stack([1 - p, p])

    def feature_importances(self) -> pd.Series:
        """Total gain per feature, as a share of the total, largest first."""
        self._check_fitted()
        gain = self.booster_.booster_.feature_importance(importance_type="gain")
        series = pd.Series(gain / max(gain.sum(), 1e-12), index=list(self.features_))
        return series.sort_values(ascending=False)


def _codes(values: Any, categories: list[str]) -> np.ndarray:
    """Each value's place among ``categories`` (as text), -1 when unseen or missing."""
    text = pd.Series(values).astype("string").astype(object)
    return np.asarray(pd.Index(categories).get_indexer(text.where(text.notna(), None)))


def _is_categorical(column: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y, dtype=float)
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{name} must have one label per row ({n}), got shape {arr.shape}")
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{name} must be 0 or 1, got {float(arr[first])!r} at row {first}")
    return arr.astype(np.int8)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.asarray(np.log(p / (1 - p)))
