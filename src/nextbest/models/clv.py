"""Customer lifetime value: BG/NBD for purchases, Gamma-Gamma for spend per purchase.

Both models are fitted by maximum likelihood on one row per customer (see
:func:`nextbest.models.clv_summary.clv_summary` for building those rows from transactions):

- :class:`BetaGeoModel`, the BG/NBD model of Fader, Hardie & Lee (2005), "Counting your
  customers the easy way: an alternative to the Pareto/NBD model", *Marketing Science* 24(2),
  275-284. While alive, a customer buys at a Poisson rate drawn from Gamma(r, alpha); after
  each purchase they drop out with a probability drawn from Beta(a, b). Inputs are
  ``frequency`` (repeat purchases), ``recency`` (time from the first to the last purchase)
  and ``T`` (time from the first purchase to the end of calibration).
- :class:`GammaGammaModel`, the spend model of Fader, Hardie & Lee (2005), "RFM and CLV:
  using iso-value curves for customer base analysis", *Journal of Marketing Research* 42(4),
  415-430, after Colombo & Jiang (1999). Spend per purchase is Gamma(p, nu) with nu drawn
  from Gamma(q, gamma) across customers; it is fitted on repeat customers only.

Parameters are optimised on the log scale, so they stay positive: L-BFGS-B from all ones,
then Nelder-Mead with tight tolerances to polish (the likelihood is flat in ``a`` and ``b``).
Standard errors come from the inverse of the Hessian of the negative log-likelihood at the
optimum, computed by central finite differences written with numpy (no automatic
differentiation), taken in the log-parameters and carried to the parameters by the delta
method; on CDNOW they reproduce lifetimes' summary to the printed digits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, gammaln, hyp2f1

from nextbest.errors import ConfigError, DataError, NotFittedError

__all__ = ["BetaGeoModel", "GammaGammaModel"]

log = logging.getLogger(__name__)
_LOG_BOUNDS = (-15.0, 12.0)  # parameters between 3e-7 and 1.6e5

ArrayLike: TypeAlias = Sequence[float] | np.ndarray | pd.Series
_Z95 = 1.959963984540054


def _column(name: str, values: ArrayLike) -> np.ndarray:
    """``values`` as a float array: numbers, no NaN, none below zero."""
    try:
        arr = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{name}: expected numbers, got {values!r:.80}") from None
    for test, what in ((np.isnan, "a number"), (lambda a: a < 0, "a number >= 0")):
        bad = np.flatnonzero(test(arr))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{name}: expected {what}, got {float(arr[i])!r} at row {i}; correct or drop that "
                "customer's row"
            )
    return arr


def _same_length(**columns: np.ndarray) -> None:
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) > 1:
        got = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise DataError(
            f"expected {', '.join(lengths)} of the same length (one value per customer), got {got}"
        )


def _rfm(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[np.ndarray, ...]:
    """Checked (frequency, recency, T): a repeat buyer's last purchase is within (0, T]."""
    x, t_x, big_t = _column("frequency", frequency), _column("recency", recency), _column("T", T)
    _same_length(frequency=x, recency=t_x, T=big_t)
    bad = np.flatnonzero((x > 0) & (t_x == 0))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"recency: expected > 0 where frequency > 0 (a repeat purchase comes after the "
            f"first), got recency 0.0 with frequency {float(x[i])!r} at row {i}; rebuild the rows "
            "with clv_summary"
        )
    bad = np.flatnonzero(t_x > big_t)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"recency: expected <= T (the last purchase falls within calibration), got "
            f"recency {float(t_x[i])!r} > T {float(big_t[i])!r} at row {i}; rebuild the rows "
            "with clv_summary"
        )
    return x, t_x, big_t


def _hessian(f: Callable[[np.ndarray], float], x: np.ndarray) -> np.ndarray:
    """Central finite-difference Hessian of ``f`` at ``x`` (steps scaled to each coordinate)."""
    h = 1e-4 * np.maximum(np.abs(x), 1.0)
    n = len(x)
    H = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.eye(n)[i] * h[i], np.eye(n)[j] * h[j]
            H[i, j] = H[j, i] = (
                f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)
            ) / (4 * h[i] * h[j])
    return H


class _MaximumLikelihood:
    """Shared fitting: log-parameter optimisation, standard errors, summary."""

    _names: tuple[str, ...] = ()

    def __init__(self, penalizer_coef: float = 0.0) -> None:
        self.penalizer_coef = penalizer_coef

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyperparameters, as scikit-learn's ``get_params``."""
        return {"penalizer_coef": self.penalizer_coef}

    def _log_likelihoods(self, params: np.ndarray, *data: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _maximise(self, *data: np.ndarray) -> None:
        if not (isinstance(self.penalizer_coef, int | float) and self.penalizer_coef >= 0):
            raise ConfigError(
                f"penalizer_coef: expected a number >= 0, got {self.penalizer_coef!r}"
            )
        n = len(data[0])
        if n == 0:
            raise DataError(f"{type(self).__name__}.fit: expected at least one customer, got 0")

        def objective(log_params: np.ndarray) -> float:
            params = np.exp(log_params)
            ll = self._log_likelihoods(params, *data).sum()
            value = -ll / n + self.penalizer_coef * float(np.sum(params**2))
            return float(value) if np.isfinite(value) else 1e100

        start = np.zeros(len(self._names))
        # log-parameters bounded: with few repeat buyers BG/NBD's r and alpha are not
        # identified (only r / alpha is) and run off together until every value overflows;
        # the bounds never bind on a fit that has an optimum inside them
        bounds = [_LOG_BOUNDS] * len(start)
        rough = minimize(objective, start, method="L-BFGS-B", bounds=bounds)
        best = minimize(
            objective,
            rough.x,
            method="Nelder-Mead",
            bounds=bounds,
            options={"maxiter": 20_000, "xatol": 1e-9, "fatol": 1e-14},
        )
        x = best.x if best.fun <= rough.fun else rough.x
        params = np.exp(x)
        # Hessian of the total negative log-likelihood in log-parameters; at the optimum the
        # delta method gives var(theta_i) = theta_i^2 * inv(H)_ii on the natural scale.
        H = _hessian(lambda z: n * objective(z), x)
        try:
            cov_log = np.linalg.inv(H)
        except np.linalg.LinAlgError:
            cov_log = np.linalg.pinv(H)
            log.warning("%s: singular Hessian; standard errors are unreliable", type(self).__name__)
        cov = cov_log * np.outer(params, params)
        self.params_ = {k: float(v) for k, v in zip(self._names, params, strict=True)}
        self.standard_errors_ = {
            k: float(np.sqrt(max(v, 0.0))) for k, v in zip(self._names, np.diag(cov), strict=True)
        }
        self.variance_matrix_ = pd.DataFrame(cov, index=self._names, columns=self._names)
        self.log_likelihood_ = float(self._log_likelihoods(params, *data).sum())
        self.n_customers_ = n

    def _check_fitted(self) -> tuple[float, ...]:
        if not hasattr(self, "params_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet; call fit(...) before predicting"
            )
        return tuple(self.params_[k] for k in self._names)

    def summary(self) -> pd.DataFrame:
        """Estimates with standard errors and 95% Wald intervals (estimate +- 1.96 se).

        Returns
        -------
        pandas.DataFrame
            Columns ``parameter``, ``estimate``, ``std_error``, ``lower_95``, ``upper_95``.
        """
        est = np.array(self._check_fitted())
        se = np.array([self.standard_errors_[k] for k in self._names])
        return pd.DataFrame(
            {
                "parameter": list(self._names),
                "estimate": est,
                "std_error": se,
                "lower_95": est - _Z95 * se,
                "upper_95": est + _Z95 * se,
            }
        )


class BetaGeoModel(_MaximumLikelihood):
    """BG/NBD: repeat purchases while alive, with a chance of dropping out after each one.

    Fader, Hardie & Lee (2005), "Counting your customers the easy way", *Marketing Science*.

    Parameters
    ----------
    penalizer_coef : float, default 0.0
        L2 penalty on the parameters added to the mean negative log-likelihood (lifetimes'
        ``penalizer_coef``); 0 is plain maximum likelihood.

    Attributes
    ----------
    params_ : dict
        ``r``, ``alpha`` (Gamma heterogeneity of the purchase rate), ``a``, ``b`` (Beta
        heterogeneity of the drop-out probability).
    standard_errors_ : dict
        Standard error of each parameter, from the finite-difference Hessian of the negative
        log-likelihood at the optimum.
    variance_matrix_ : pandas.DataFrame
        Their asymptotic covariance.
    log_likelihood_ : float
        Total log-likelihood of the data at the optimum (without the penalty).
    """

    _names = ("r", "alpha", "a", "b")

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> BetaGeoModel:
        """Fit on repeat purchases, recency and age of each customer (same time unit).

        Parameters
        ----------
        frequency : array-like
            Repeat purchases (purchase days after the first) in calibration.
        recency : array-like
            Time from the first to the last purchase; 0 for frequency 0.
        T : array-like
            Time from the first purchase to the end of calibration.

        Returns
        -------
        BetaGeoModel
            ``self``, fitted.

        Raises
        ------
        DataError
            Negative, missing or inconsistent values, naming the field and the first row.
        """
        self._maximise(*_rfm(frequency, recency, T))
        return self

    def _log_likelihoods(self, params: np.ndarray, *data: np.ndarray) -> np.ndarray:
        """Log-likelihood of each customer: the BG/NBD likelihood of the paper."""
        r, alpha, a, b = params
        x, t_x, big_t = data
        a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
        a3 = -(r + x) * np.log(alpha + big_t)
        a4 = np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(alpha + t_x)
        top = np.maximum(a3, a4)
        both = np.exp(a3 - top) + np.where(x > 0, np.exp(a4 - top), 0.0)
        return np.asarray(a1 + a2 + np.log(both) + top)

    def expected_purchases_new_customer(self, t: float) -> float:
        """Unconditional E[X(t)]: purchases of a new customer in their first ``t`` periods.

        The closed form of Fader, Hardie & Lee (2005), with Gauss's hypergeometric 2F1.
        """
        r, alpha, a, b = self._check_fitted()
        hyp = hyp2f1(r, b, a + b - 1, t / (alpha + t))
        return float((a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp))

    def expected_purchases(
        self, t: float, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> np.ndarray:
        """Conditional E[Y(t) | x, t_x, T]: each customer's purchases in the next ``t`` periods.

        The closed form of Fader, Hardie & Lee (2005); Euler's transformation of 2F1 where
        the plain series overflows.

        Parameters
        ----------
        t : float
            Periods ahead, in the unit the model was fitted in (weeks from ``clv_summary``).
        frequency, recency, T : array-like
            One value per customer, as for :meth:`fit`.

        Returns
        -------
        numpy.ndarray
            Expected purchases of each customer in ``(T, T + t]``.
        """
        r, alpha, a, b = self._check_fitted()
        x, t_x, big_t = _rfm(frequency, recency, T)
        z = t / (alpha + big_t + t)
        ha, hb, hc = r + x, b + x, a + b + x - 1
        hyp = hyp2f1(ha, hb, hc, z)
        # Euler's transformation where the series overflows (large x, z near 1).
        bad = ~np.isfinite(hyp)
        if np.any(bad):
            hyp = np.where(
                bad,
                hyp2f1(hc - ha, hc - hb, hc, z) * (1 - z) ** (hc - ha - hb),
                hyp,
            )
        num = (a + b + x - 1) / (a - 1) * (1 - ((alpha + big_t) / (alpha + big_t + t)) ** ha * hyp)
        den = 1 + np.where(
            x > 0,
            a / (b + np.maximum(x, 1) - 1) * ((alpha + big_t) / (alpha + t_x)) ** ha,
            0.0,
        )
        return np.asarray(num / den)

    def probability_alive(
        self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> np.ndarray:
        """P(alive | x, t_x, T): 1 for a customer with no repeat purchase (the model's premise).

        Fader, Hardie & Lee (2005) and their note "Computing P(alive) using the BG/NBD
        model"; computed on the log scale.
        """
        r, alpha, a, b = self._check_fitted()
        x, t_x, big_t = _rfm(frequency, recency, T)
        log_odds_dead = (r + x) * np.log((alpha + big_t) / (alpha + t_x)) + np.log(
            a / (b + np.maximum(x, 1) - 1)
        )
        return np.asarray(np.where(x > 0, expit(-log_odds_dead), 1.0))


class GammaGammaModel(_MaximumLikelihood):
    """Gamma-Gamma spend per purchase, independent of how often a customer buys.

    Fader, Hardie & Lee (2005), "RFM and CLV: using iso-value curves", *JMR*; Colombo &
    Jiang (1999), "A stochastic RFM model", *Journal of Interactive Marketing*.

    Parameters
    ----------
    penalizer_coef : float, default 0.0
        L2 penalty on the parameters added to the mean negative log-likelihood.

    Attributes
    ----------
    params_ : dict
        ``p`` (shape of spend per purchase), ``q`` and ``gamma`` (Gamma heterogeneity of its
        scale across customers; lifetimes calls ``gamma`` ``v``).
    standard_errors_, variance_matrix_, log_likelihood_
        As for :class:`BetaGeoModel`.
    n_excluded_ : int
        Customers left out of the fit because they have no repeat purchase.
    """

    _names = ("p", "q", "gamma")

    def fit(self, frequency: ArrayLike, monetary_value: ArrayLike) -> GammaGammaModel:
        """Fit on repeat customers: frequency > 0 and mean spend of their repeat purchases.

        Customers with frequency 0 are left out (there is no repeat spend to observe), and a
        logged message says how many.
        """
        x, m = _column("frequency", frequency), _column("monetary_value", monetary_value)
        _same_length(frequency=x, monetary_value=m)
        repeat = x > 0
        bad = np.flatnonzero(repeat & (m == 0))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"monetary_value: expected > 0 where frequency > 0 (mean spend of the repeat "
                f"purchases), got 0.0 with frequency {float(x[i])!r} at row {i}; drop repeat "
                "customers who spent nothing"
            )
        if not repeat.any():
            raise DataError(
                f"frequency: expected at least one repeat customer (frequency > 0) to fit spend "
                f"per purchase, got none among {len(x)} customers; calibrate on a longer period"
            )
        self.n_excluded_ = int((~repeat).sum())
        if self.n_excluded_:
            log.info(
                "Gamma-Gamma: fitting on %d repeat customers; %d with frequency 0 left out "
                "(no repeat purchase, so no spend per repeat purchase to model)",
                int(repeat.sum()),
                self.n_excluded_,
            )
        self._maximise(x[repeat], m[repeat])
        return self

    def _log_likelihoods(self, params: np.ndarray, *data: np.ndarray) -> np.ndarray:
        """Log-likelihood of each repeat customer's mean spend ``m`` over ``x`` purchases."""
        p, q, v = params
        x, m = data
        return np.asarray(
            gammaln(p * x + q)
            - gammaln(p * x)
            - gammaln(q)
            + q * np.log(v)
            + (p * x - 1) * np.log(m)
            + p * x * np.log(x)
            - (p * x + q) * np.log(x * m + v)
        )

    def conditional_expected_average_profit(
        self, frequency: ArrayLike, monetary_value: ArrayLike
    ) -> np.ndarray:
        """E[spend per purchase | x, m]: the population mean shrunk toward each customer's mean.

        Fader, Hardie & Lee (2005), "RFM and CLV": the weighted mean of the population mean
        ``p * gamma / (q - 1)`` and the customer's mean ``m``, with weight
        ``p * x / (p * x + q - 1)`` on ``m``; the population mean for frequency 0.
        """
        p, q, v = self._check_fitted()
        x, m = _column("frequency", frequency), _column("monetary_value", monetary_value)
        _same_length(frequency=x, monetary_value=m)
        weight = p * x / (p * x + q - 1)
        return np.asarray((1 - weight) * (p * v / (q - 1)) + weight * m)

    def customer_lifetime_value(
        self,
        bgnbd_model: BetaGeoModel,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,
        monetary_value: ArrayLike,
        horizon_weeks: int = 52,
        discount_rate_per_week: float = 0.0,
    ) -> np.ndarray:
        """Discounted expected spend over the next ``horizon_weeks`` weeks, week by week.

        ``sum_{w=1..H} (E[Y(w)] - E[Y(w-1)]) * E[m] / (1 + d) ** w``, with ``E[Y]`` from
        ``bgnbd_model`` (fitted with time in weeks) and ``E[m]`` from
        :meth:`conditional_expected_average_profit`, as lifetimes' ``customer_lifetime_value``
        with ``freq="W"``.
        """
        if not (isinstance(horizon_weeks, int) and horizon_weeks >= 1):
            raise ConfigError(f"horizon_weeks: expected a whole number >= 1, got {horizon_weeks!r}")
        if not discount_rate_per_week >= 0:
            raise ConfigError(
                f"discount_rate_per_week: expected a number >= 0, got {discount_rate_per_week!r}"
            )
        spend = self.conditional_expected_average_profit(frequency, monetary_value)
        value = np.zeros_like(spend)
        before = np.zeros_like(spend)
        for week in range(1, horizon_weeks + 1):
            now = bgnbd_model.expected_purchases(week, frequency, recency, T)
            value += spend * (now - before) / (1 + discount_rate_per_week) ** week
            before = now
        return value
