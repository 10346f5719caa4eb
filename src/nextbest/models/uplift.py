"""Uplift models: the effect of each of several treatments against one control, per customer.

Meta-learners over LightGBM estimate the conditional average treatment effect
``tau_t(x) = E[Y | T = t, X = x] - E[Y | T = control, X = x]`` of every treatment arm ``t``
(an e-mail, an offer) against the control arm, from randomised or logged data:

- :class:`TLearner`: one outcome model per arm; the effect is the difference of their
  predictions (Künzel, Sekhon, Bickel & Yu 2019, "Metalearners for estimating heterogeneous
  treatment effects using machine learning", PNAS 116(10)).
- :class:`XLearner`: imputes each customer's effect with the other arm's outcome model, fits
  the imputed effects, and blends the two effect models by the propensity (Künzel et al. 2019).
- :class:`DRLearner`: regresses the doubly robust (AIPW) pseudo-outcome, built with
  cross-fitted outcome models, on the features (Kennedy 2020, "Towards optimal doubly robust
  estimation of heterogeneous causal effects", arXiv:2004.14497; the pseudo-outcome is that of
  Athey & Wager 2021, "Policy learning with observational data", Econometrica 89(1)).

Each treatment is compared with the control on the rows of those two arms only, so that
several treatments are fitted as independent two-arm problems. Outcomes are binary (a visit,
a purchase: ``LGBMClassifier``, its probability) or continuous (spend: ``LGBMRegressor``),
told apart from ``y`` or set with ``outcome``. The propensity ``e_t(x)``, the probability of
treatment ``t`` among the rows of ``t`` and the control, is either estimated by a logistic
regression on the features, or known: on randomised data pass the randomisation shares, e.g.
``{"No E-Mail": 1/3, "Mens E-Mail": 1/3, "Womens E-Mail": 1/3}``, and ``e_t = p_t / (p_t +
p_control)``. Estimated propensities are clipped to ``[0.01, 0.99]``.

Features are a pandas DataFrame (string columns become ``category``, which LightGBM splits on
natively) or a numpy array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nextbest.errors import ConfigError, DataError, NotFittedError

__all__ = ["DRLearner", "TLearner", "XLearner"]

LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "n_estimators": 100,
    "learning_rate": 0.05,
    "num_leaves": 7,
    "min_child_samples": 200,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "verbose": -1,
}
"""LightGBM settings that ``learner_params`` are laid over: shallow, slow, regularised trees,
since effects are small differences between noisy outcomes."""
_CLIP = 0.01
Model = LGBMClassifier | LGBMRegressor


def _frame(X: Any) -> pd.DataFrame:
    """Features as a DataFrame: arrays get columns ``x0``...; text columns become categories."""
    if isinstance(X, pd.DataFrame):
        frame = X.reset_index(drop=True)
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise DataError(
                f"X: expected a 2-d array or a DataFrame of features, got {arr.ndim} dimension(s)"
            )
        frame = pd.DataFrame(arr, columns=[f"x{j}" for j in range(arr.shape[1])])
    text = [
        c
        for c in frame.columns
        if not isinstance(frame[c].dtype, pd.CategoricalDtype)
        and not pd.api.types.is_numeric_dtype(frame[c])
    ]
    return frame.astype(dict.fromkeys(text, "category")) if text else frame


class _UpliftLearner(BaseEstimator):  # type: ignore[misc]
    """What the meta-learners share: checks, arms, propensities, LightGBM models, predictions.

    A subclass says how one treatment is fitted against the control (``_fit_arm``, on the rows
    of the two arms, ``t`` 1 for the treatment) and how its effect is predicted (``_effect``).
    """

    _needs_propensity = True

    def __init__(
        self,
        control: Any = 0,
        outcome: str = "auto",
        learner_params: dict[str, Any] | None = None,
        propensity: dict[Any, float] | None = None,
        n_folds: int = 5,
        random_state: int = 0,
    ) -> None:
        self.control = control
        self.outcome = outcome
        self.learner_params = learner_params
        self.propensity = propensity
        self.n_folds = n_folds
        self.random_state = random_state

    # -- fitting --------------------------------------------------------------------------

    def fit(self, X: Any, treatment: Any, y: Any) -> _UpliftLearner:
        """Fit the effect of every treatment arm against ``control``.

        Parameters
        ----------
        X
            Features, one row per customer (DataFrame, categorical columns allowed, or array).
        treatment
            The arm of each row; the arms other than ``control`` are the treatments.
        y
            Numeric outcome of each row (0/1 for a binary outcome).

        Returns
        -------
        self
        """
        frame, arms, y = self._check_fit(X, treatment, y)
        self.feature_names_in_ = list(frame.columns)
        self.binary_ = self._binary(y)
        self.models_: dict[Any, dict[str, Any]] = {}
        self.propensity_models_: dict[Any, Any] = {}
        for arm in self.treatments_:  # a loop over arms: each is its own two-arm problem
            rows = np.flatnonzero((arms == arm) | (arms == self.control))
            Xa = frame.iloc[rows].reset_index(drop=True)
            ta = (arms[rows] == arm).astype(np.int64)
            if self._needs_propensity and self.propensity is None:
                self.propensity_models_[arm] = _propensity_model(Xa).fit(Xa, ta)
            self.models_[arm] = self._fit_arm(Xa, ta, y[rows], arm)
        return self

    def _fit_arm(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, arm: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _effect(self, X: pd.DataFrame, arm: Any) -> np.ndarray:
        raise NotImplementedError

    def _check_fit(self, X: Any, treatment: Any, y: Any) -> tuple[pd.DataFrame, np.ndarray, Any]:
        name = type(self).__name__
        if self.outcome not in ("auto", "binary", "continuous"):
            raise ConfigError(
                f"{name}.outcome: expected 'auto', 'binary' or 'continuous', got {self.outcome!r}"
            )
        if not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise ConfigError(f"{name}.n_folds: expected an integer >= 2, got {self.n_folds!r}")
        if self.learner_params is not None and not isinstance(self.learner_params, dict):
            raise ConfigError(
                f"{name}.learner_params: expected a dict of LightGBM parameters or None, "
                f"got {type(self.learner_params).__name__}"
            )
        frame = _frame(X)
        arms = np.asarray(treatment, dtype=object).ravel()
        try:
            y = np.asarray(y, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise DataError(
                "y: expected numeric outcomes (0/1 or amounts); got non-numbers"
            ) from None
        if not len(frame) == len(arms) == len(y):
            raise DataError(
                f"X, treatment and y: expected one row each per customer, got {len(frame)}, "
                f"{len(arms)} and {len(y)} rows; pass aligned inputs"
            )
        if np.isnan(y).any():
            raise DataError(
                f"y: expected no missing outcomes, got {int(np.isnan(y).sum())} NaN; "
                "drop those rows or fill them (0 for no response)"
            )
        if pd.isna(arms).any():
            raise DataError(
                f"treatment: expected an arm for every row, got {int(pd.isna(arms).sum())} "
                "missing; drop those rows"
            )
        present = pd.unique(arms)
        if self.control not in set(present):
            raise DataError(
                f"treatment: expected control arm {self.control!r} among the arms, got "
                f"{sorted(map(str, present))}; set control= to the arm of the control group"
            )
        declared = list(self.propensity or {}) if isinstance(self.propensity, dict) else []
        if isinstance(getattr(treatment, "dtype", None), pd.CategoricalDtype):
            declared += list(treatment.cat.categories)
        empty = [a for a in declared if a not in set(present)]
        if empty:
            raise DataError(
                f"treatment: arm(s) {sorted(map(str, empty))} have no rows; expected at least "
                "one customer per arm; drop the arm or add its data"
            )
        self.treatments_ = sorted(a for a in present if a != self.control)
        if not self.treatments_:
            raise DataError(
                f"treatment: expected at least one arm besides control {self.control!r}, got "
                "only the control"
            )
        for arm in [self.control, *self.treatments_]:
            values = y[arms == arm]
            if values.min() == values.max():
                raise DataError(
                    f"y: expected outcomes that vary within arm {arm!r}, got {len(values)} rows "
                    f"all equal to {values[0]:g}; an effect cannot be learned from it"
                )
        self._check_propensity(name)
        return frame, arms, y

    def _check_propensity(self, name: str) -> None:
        if self.propensity is None:
            return
        if not isinstance(self.propensity, dict):
            raise ConfigError(
                f"{name}.propensity: expected None (estimate it) or a dict arm -> share, got "
                f"{type(self.propensity).__name__}"
            )
        missing = [a for a in [self.control, *self.treatments_] if a not in self.propensity]
        bad = {a: p for a, p in self.propensity.items() if not 0 < float(p) < 1}
        if missing or bad:
            raise ConfigError(
                f"{name}.propensity: expected a share in (0, 1) for every arm; missing "
                f"{sorted(map(str, missing))}, out of range {bad}"
            )

    def _binary(self, y: np.ndarray) -> bool:
        zero_one = bool(np.isin(y, (0.0, 1.0)).all())
        if self.outcome == "binary" and not zero_one:
            raise DataError(
                "y: outcome='binary' expects 0/1 outcomes, got values such as "
                f"{y[~np.isin(y, (0.0, 1.0))][0]:g}; use outcome='continuous'"
            )
        return self.outcome == "binary" or (self.outcome == "auto" and zero_one)

    # -- building blocks ------------------------------------------------------------------

    def _params(self, salt: int) -> dict[str, Any]:
        """LightGBM settings: the defaults, a seed per model, then ``learner_params``."""
        seed = {"random_state": self.random_state + salt}
        return {**LIGHTGBM_DEFAULTS, **seed, **(self.learner_params or {})}

    def _outcome_model(self, X: pd.DataFrame, y: np.ndarray, salt: int) -> Model:
        params = self._params(salt)
        model = LGBMClassifier(**params) if self.binary_ else LGBMRegressor(**params)
        return model.fit(X, y)

    def _regressor(self, X: pd.DataFrame, target: np.ndarray, salt: int) -> LGBMRegressor:
        return LGBMRegressor(**self._params(salt)).fit(X, target)

    def _mean(self, model: Model, X: pd.DataFrame) -> np.ndarray:
        """Predicted mean outcome: the probability of 1 for a binary outcome."""
        if isinstance(model, LGBMClassifier):
            proba = np.asarray(model.predict_proba(X), dtype=np.float64)
            return proba[:, 1]
        return np.asarray(model.predict(X), dtype=np.float64)

    def _propensity(self, X: pd.DataFrame, arm: Any) -> np.ndarray:
        """``e_t(x)``: probability of ``arm`` among the rows of ``arm`` and the control."""
        if self.propensity is not None:
            p_t, p_c = float(self.propensity[arm]), float(self.propensity[self.control])
            return np.full(len(X), p_t / (p_t + p_c))
        e = self.propensity_models_[arm].predict_proba(X)[:, 1]
        return np.clip(np.asarray(e, dtype=np.float64), _CLIP, 1 - _CLIP)

    # -- predicting -----------------------------------------------------------------------

    def _check_predict(self, X: Any) -> pd.DataFrame:
        name = type(self).__name__
        if not hasattr(self, "models_"):
            raise NotFittedError(f"{name} is not fitted yet; call fit(X, treatment, y) first")
        frame = _frame(X)
        if list(frame.columns) != self.feature_names_in_:
            raise DataError(
                f"X: expected the features seen in fit, {self.feature_names_in_}, got "
                f"{list(frame.columns)}; pass the same columns in the same order"
            )
        return frame

    def predict_effect(self, X: Any) -> np.ndarray:
        """Conditional average effect of each treatment against the control.

        Returns
        -------
        numpy.ndarray
            Shape ``(n, len(treatments_))``; column ``j`` is ``treatments_[j]`` minus control,
            in units of ``y`` (probability points for a binary outcome).
        """
        frame = self._check_predict(X)
        return np.column_stack([self._effect(frame, arm) for arm in self.treatments_])

    def best_treatment(
        self, X: Any, costs: dict[Any, float] | None = None, value_per_unit: float = 1.0
    ) -> np.ndarray:
        """Per row, the arm of largest net effect ``effect * value_per_unit - cost``.

        The control is chosen where no treatment has a positive net effect; ties go to the
        first arm in ``treatments_`` order. ``costs`` maps an arm to its cost per treated
        customer (arms not named cost nothing).
        """
        costs = costs or {}
        unknown = (
            [a for a in costs if a not in self.treatments_] if hasattr(self, "models_") else []
        )
        if unknown:
            raise DataError(
                f"costs: expected arms among {self.treatments_}, got {sorted(map(str, unknown))}"
            )
        effect = self.predict_effect(X)
        cost = np.array([float(costs.get(a, 0.0)) for a in self.treatments_])
        net = effect * float(value_per_unit) - cost[None, :]
        best = np.argmax(net, axis=1)
        labels = np.asarray(self.treatments_, dtype=object)[best]
        return np.where(net[np.arange(len(net)), best] > 0, labels, self.control)


def _propensity_model(X: pd.DataFrame) -> Any:
    """Logistic regression on standardised numbers and one-hot categories."""
    cats = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
    nums = [c for c in X.columns if c not in cats]
    prep = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), nums),
            ("cat", OneHotEncoder(handle_unknown="ignore"), cats),
        ]
    )
    return make_pipeline(prep, LogisticRegression(max_iter=1_000))


class TLearner(_UpliftLearner):
    """Two-model learner: ``tau_t(x) = mu_t(x) - mu_c(x)`` (Künzel et al. 2019).

    Parameters
    ----------
    control
        Label of the control arm in ``treatment``.
    outcome
        ``"auto"`` (binary when ``y`` is 0/1), ``"binary"`` or ``"continuous"``.
    learner_params
        LightGBM parameters laid over :data:`LIGHTGBM_DEFAULTS` (e.g. ``{"n_jobs": 1}``).
    propensity
        Unused by the T-learner; accepted so that all learners share one signature.
    n_folds
        Unused by the T-learner.
    random_state
        Seed of the LightGBM models.
    """

    _needs_propensity = False

    def _fit_arm(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, arm: Any) -> dict[str, Any]:
        return {
            "treated": self._outcome_model(X[t == 1], y[t == 1], 1),
            "control": self._outcome_model(X[t == 0], y[t == 0], 2),
        }

    def _effect(self, X: pd.DataFrame, arm: Any) -> np.ndarray:
        m = self.models_[arm]
        return self._mean(m["treated"], X) - self._mean(m["control"], X)


class XLearner(_UpliftLearner):
    """X-learner (Künzel et al. 2019).

    Stage one fits ``mu_t`` and ``mu_c`` as the T-learner does; stage two fits the imputed
    effects ``D = y - mu_c(x)`` on treated rows (``tau_1``) and ``D = mu_t(x) - y`` on control
    rows (``tau_0``); the effect is ``e(x) tau_0(x) + (1 - e(x)) tau_1(x)`` with ``e`` the
    propensity. Parameters are those of :class:`TLearner`; ``propensity`` is used here.
    """

    def _fit_arm(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, arm: Any) -> dict[str, Any]:
        X1, X0 = X[t == 1], X[t == 0]
        mu1 = self._outcome_model(X1, y[t == 1], 1)
        mu0 = self._outcome_model(X0, y[t == 0], 2)
        return {
            "tau_treated": self._regressor(X1, y[t == 1] - self._mean(mu0, X1), 3),
            "tau_control": self._regressor(X0, self._mean(mu1, X0) - y[t == 0], 4),
        }

    def _effect(self, X: pd.DataFrame, arm: Any) -> np.ndarray:
        m, e = self.models_[arm], self._propensity(X, arm)
        tau1 = np.asarray(m["tau_treated"].predict(X), dtype=np.float64)
        tau0 = np.asarray(m["tau_control"].predict(X), dtype=np.float64)
        return e * tau0 + (1 - e) * tau1


class DRLearner(_UpliftLearner):
    """Doubly robust learner (Kennedy 2020) with ``n_folds``-fold cross-fitting.

    On each fold, ``mu_t`` and ``mu_c`` fitted on the other folds give the AIPW pseudo-outcome
    ``phi = mu_t - mu_c + t (y - mu_t) / e - (1 - t) (y - mu_c) / (1 - e)`` (Athey & Wager
    2021), whose conditional mean is the effect; a LightGBM regression of ``phi`` on ``x`` over
    all rows is the effect model. Folds are stratified by arm and shuffled with
    ``random_state``. Parameters are those of :class:`TLearner`; ``propensity`` and
    ``n_folds`` are used here.
    """

    def _fit_arm(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, arm: Any) -> dict[str, Any]:
        if min(int(t.sum()), int((1 - t).sum())) < self.n_folds:
            raise DataError(
                f"treatment: DRLearner with n_folds={self.n_folds} expects at least that many "
                f"rows in arm {arm!r} and in the control; lower n_folds or add data"
            )
        e = self._propensity(X, arm)
        phi = np.empty(len(y))
        folds = StratifiedKFold(self.n_folds, shuffle=True, random_state=self.random_state)
        for k, (fit, held) in enumerate(folds.split(X, t)):  # a loop over folds
            fit1, fit0 = fit[t[fit] == 1], fit[t[fit] == 0]
            mu1 = self._mean(self._outcome_model(X.iloc[fit1], y[fit1], 10 + k), X.iloc[held])
            mu0 = self._mean(self._outcome_model(X.iloc[fit0], y[fit0], 50 + k), X.iloc[held])
            th, yh, eh = t[held], y[held], e[held]
            phi[held] = mu1 - mu0 + th * (yh - mu1) / eh - (1 - th) * (yh - mu0) / (1 - eh)
        return {"tau": self._regressor(X, phi, 3)}

    def _effect(self, X: pd.DataFrame, arm: Any) -> np.ndarray:
        return np.asarray(self.models_[arm]["tau"].predict(X), dtype=np.float64)
