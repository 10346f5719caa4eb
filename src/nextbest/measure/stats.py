"""Statistics of A/B tests: intervals, lifts, tests, Holm, CUPED, sample ratio, sequential tests.

Everything works on an arm's summary (:class:`Sample`: count, mean, variance), so that the
warehouse sums up and only the sums travel.

- Rates: the Wilson score interval (Wilson 1927), or the normal one. Means: the t interval.
- Lift against control: absolute, with the normal interval for rates and Welch's interval
  (Welch-Satterthwaite degrees of freedom) for means; relative (``treated / control - 1``)
  with the delta method's standard error,
  ``se^2 = se_t^2 / m_c^2 + m_t^2 se_c^2 / m_c^4``.
- Tests: the two-proportion z-test with the pooled rate; Welch's t-test
  (``scipy.stats.ttest_ind_from_stats(equal_var=False)``); Holm's step-down correction over
  several arms (Holm 1979).
- CUPED (Deng, Xu, Kohavi & Walker 2013): ``y - theta (x - mean x)``, where ``x`` is measured
  before the assignment, with ``theta = sum_a cov_a(y, x) / n_a / sum_a var_a(x) / n_a``
  pooled over the arms ``a`` (weighted by ``1 / n_a``: the ``theta`` that minimises the
  variance of a difference of arm means, ``sum_a var_a(y_cuped) / n_a``; with equal arms the
  plain within-arm pooled ``cov / var``). The variance reduction achieved is
  ``1 - sum_a var_a(y_cuped) / n_a / sum_a var_a(y) / n_a``: with equal arms
  ``1 - var(y_cuped) / var(y)`` within arms, the squared correlation of ``y`` and ``x``.
- Sample ratio mismatch: Pearson's chi-square test of the arms' counts against their
  configured weights; ``p < 0.001`` is a mismatch and is logged as a warning.
- Always-valid inference (Johari, Koomen, Pekelis & Walsh 2017, "Peeking at A/B tests"): the
  mixture sequential probability ratio test with a normal mixing distribution ``N(0, tau^2)``
  over the effect; for an estimate ``d`` with variance ``V`` at a look,
  ``Lambda = sqrt(V / (V + tau^2)) exp(tau^2 (d - d0)^2 / (2 V (V + tau^2)))``; the
  always-valid p-value is the running minimum of ``min(1, 1 / Lambda)`` over the looks, and
  the confidence sequence the running intersection of ``{d0 : Lambda(d0) < 1 / alpha}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from nextbest.errors import DataError

__all__ = [
    "Cuped",
    "Estimate",
    "Lift",
    "Plan",
    "Sample",
    "SampleRatio",
    "Sequential",
    "TestResult",
    "compare",
    "cuped",
    "holm",
    "mean_interval",
    "plan_experiment",
    "power_means",
    "power_rates",
    "proportion_interval",
    "sample_ratio_test",
    "sequential_test",
    "two_proportion_ztest",
    "welch_ttest",
]

log = logging.getLogger(__name__)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise DataError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    return float(stats.norm.ppf(0.5 + level / 2))


@dataclass(frozen=True)
class Sample:
    """One arm's metric: number of units, mean, and variance (``ddof=1``)."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, values: ArrayLike) -> Sample:
        v = np.asarray(values, dtype=np.float64)
        return cls(len(v), float(v.mean()) if len(v) else math.nan, _var(v))

    @classmethod
    def of_counts(cls, successes: float, n: int) -> Sample:
        """A rate: ``successes`` of ``n`` (the variance of the 0/1 values, ``ddof=1``)."""
        p = successes / n if n else math.nan
        var = successes * (n - successes) / (n * (n - 1)) if n > 1 else math.nan
        return cls(int(n), p, var)

    @property
    def se(self) -> float:
        return math.sqrt(self.var / self.n) if self.n > 0 else math.nan


def _var(v: np.ndarray) -> float:
    return float(v.var(ddof=1)) if len(v) > 1 else math.nan


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and a two-sided interval at ``level``."""

    value: float
    se: float
    low: float
    high: float
    level: float

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float
    method: str
    df: float | None = None


@dataclass(frozen=True)
class Lift:
    """Treated against control: absolute and relative lift, and the test of no difference."""

    absolute: Estimate
    relative: Estimate
    test: TestResult


def proportion_interval(
    successes: float, n: int, level: float = 0.95, method: str = "wilson"
) -> Estimate:
    """A rate with the Wilson score (default) or the normal interval."""
    z = _z(level)
    if n <= 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, level)
    p = successes / n
    se = math.sqrt(p * (1 - p) / n)
    if method == "normal":
        return Estimate(p, se, p - z * se, p + z * se, level)
    if method != "wilson":
        raise DataError(f"method must be 'wilson' or 'normal', got {method!r}")
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Estimate(p, se, centre - half, centre + half, level)


def mean_interval(sample: Sample, level: float = 0.95) -> Estimate:
    """A mean with the t interval (``n - 1`` degrees of freedom)."""
    _z(level)
    if sample.n < 2:
        return Estimate(sample.mean, math.nan, math.nan, math.nan, level)
    t = float(stats.t.ppf(0.5 + level / 2, sample.n - 1))
    se = sample.se
    return Estimate(sample.mean, se, sample.mean - t * se, sample.mean + t * se, level)


def _welch_df(t: Sample, c: Sample) -> float:
    a, b = t.var / t.n, c.var / c.n
    den = a * a / (t.n - 1) + b * b / (c.n - 1)
    return (a + b) ** 2 / den if den > 0 else math.inf


def two_proportion_ztest(x_t: float, n_t: int, x_c: float, n_c: int) -> TestResult:
    """z-test of equal rates with the pooled rate; two-sided p-value."""
    pooled = (x_t + x_c) / (n_t + n_c)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    z = (x_t / n_t - x_c / n_c) / se if se > 0 else 0.0
    return TestResult(z, float(2 * stats.norm.sf(abs(z))), "two-proportion z")


def welch_ttest(treated: Sample, control: Sample) -> TestResult:
    """Welch's t-test of equal means (unequal variances); two-sided p-value."""
    res = stats.ttest_ind_from_stats(
        treated.mean,
        math.sqrt(treated.var),
        treated.n,
        control.mean,
        math.sqrt(control.var),
        control.n,
        equal_var=False,
    )
    stat, p = float(res.statistic), float(res.pvalue)
    if math.isnan(stat) and treated.var == 0 and control.var == 0:
        stat, p = 0.0, 1.0  # both arms constant and equal: no evidence of a difference
    return TestResult(stat, p, "Welch t", _welch_df(treated, control))


def compare(treated: Sample, control: Sample, *, binary: bool, level: float = 0.95) -> Lift:
    """Absolute and relative lift of ``treated`` over ``control``, with the matching test.

    ``binary``: the metric is a rate (normal interval and the z-test, with the variance
    ``p (1 - p)``), else a mean (Welch's interval and t-test).
    """
    z = _z(level)
    diff = treated.mean - control.mean
    if binary:
        var_t = treated.mean * (1 - treated.mean) / treated.n
        var_c = control.mean * (1 - control.mean) / control.n
        q = z
        test = two_proportion_ztest(
            treated.mean * treated.n, treated.n, control.mean * control.n, control.n
        )
    else:
        var_t, var_c = treated.var / treated.n, control.var / control.n
        df = _welch_df(treated, control)
        q = float(stats.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else z
        test = welch_ttest(treated, control)
    se = math.sqrt(var_t + var_c)
    absolute = Estimate(diff, se, diff - q * se, diff + q * se, level)
    m_c = control.mean
    if m_c == 0 or not math.isfinite(m_c):
        relative = Estimate(math.nan, math.nan, math.nan, math.nan, level)
    else:
        rel = treated.mean / m_c - 1
        rse = math.sqrt(var_t / m_c**2 + treated.mean**2 * var_c / m_c**4)
        relative = Estimate(rel, rse, rel - z * rse, rel + z * rse, level)
    return Lift(absolute, relative, test)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given; NaN kept."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


@dataclass(frozen=True)
class Cuped:
    """CUPED adjustment: ``theta``, the variance reduction achieved, the adjusted values."""

    theta: float
    variance_reduction: float
    adjusted: np.ndarray = field(repr=False, compare=False)


def cuped(y: ArrayLike, x: ArrayLike, groups: ArrayLike) -> Cuped:
    """Adjust ``y`` by the pre-period covariate ``x``, ``theta`` pooled over ``groups``."""
    yv, xv = np.asarray(y, np.float64), np.asarray(x, np.float64)
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    if not len(yv) == len(xv) == len(codes):
        raise DataError(
            f"y, x and groups: expected equal lengths, got {len(yv)}, {len(xv)}, {len(codes)}"
        )
    k = int(codes.max()) + 1 if len(codes) else 0
    n = np.bincount(codes, minlength=k).astype(np.float64)

    def centred(v: np.ndarray) -> np.ndarray:
        return v - (np.bincount(codes, v, minlength=k) / n)[codes]

    yc, xc = centred(yv), centred(xv)
    with np.errstate(divide="ignore"):
        w = np.where(n > 1, 1 / (n * (n - 1)), 0.0)  # var_a / n_a = sum of squares x w_a
    sxx = w @ np.bincount(codes, xc * xc, minlength=k)
    sxy = w @ np.bincount(codes, xc * yc, minlength=k)
    syy = w @ np.bincount(codes, yc * yc, minlength=k)
    if sxx <= 0 or syy <= 0:
        return Cuped(0.0, 0.0, yv.copy())
    theta = float(sxy / sxx)
    adjusted = yv - theta * (xv - xv.mean())
    after = syy - 2 * theta * sxy + theta * theta * sxx
    return Cuped(theta, float(1.0 - after / syy), adjusted)


@dataclass(frozen=True)
class SampleRatio:
    """Observed arm counts against the configured weights (Pearson's chi-square)."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    threshold: float = 0.001

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.threshold


def sample_ratio_test(
    counts: Mapping[str, int], weights: Mapping[str, float], threshold: float = 0.001
) -> SampleRatio:
    """Test the arms' counts against ``weights`` (normalised); warns when ``p < threshold``."""
    unknown = sorted(set(counts) - set(weights))
    if unknown:
        raise DataError(
            f"sample ratio: arm(s) {', '.join(map(repr, unknown))} have no weight; weights "
            f"given for {', '.join(map(repr, weights))}"
        )
    if any(not w > 0 for w in weights.values()):
        raise DataError(f"sample ratio: weights must be > 0, got {dict(weights)}")
    arms = list(weights)
    obs = np.array([counts.get(a, 0) for a in arms], dtype=np.float64)
    share = np.array([weights[a] for a in arms], dtype=np.float64)
    exp = obs.sum() * share / share.sum()
    chi2, p = stats.chisquare(obs, exp) if len(arms) > 1 else (0.0, 1.0)
    result = SampleRatio(
        {a: int(o) for a, o in zip(arms, obs, strict=True)},
        {a: float(e) for a, e in zip(arms, exp, strict=True)},
        float(chi2),
        float(p),
        threshold,
    )
    if result.mismatch:
        log.warning(
            "SAMPLE RATIO MISMATCH: arms %s observed against %s expected (chi2 %.1f, p %.2g): "
            "the assignment or the logging is broken; do not trust the lifts",
            result.observed,
            {a: round(e, 1) for a, e in result.expected.items()},
            result.chi2,
            result.p_value,
        )
    return result


@dataclass(frozen=True)
class Sequential:
    """Always-valid inference after ``looks`` looks: p-value and confidence sequence."""

    p_value: float
    low: float
    high: float
    level: float
    tau: float
    looks: int


def sequential_test(
    estimates: ArrayLike,
    variances: ArrayLike,
    *,
    tau: float,
    level: float = 0.95,
    null: float = 0.0,
) -> Sequential:
    """Mixture SPRT over the looks so far (one estimate and its variance per look, in order).

    ``tau`` is the standard deviation of the normal mixing distribution over the effect, in
    the metric's units: the test has most power for effects of about that size.
    """
    d = np.atleast_1d(np.asarray(estimates, np.float64))
    v = np.atleast_1d(np.asarray(variances, np.float64))
    if not tau > 0:
        raise DataError(f"tau must be > 0 (the scale of the effects expected), got {tau}")
    alpha = 1 - level
    _z(level)
    ok = np.isfinite(d) & np.isfinite(v) & (v > 0)
    d, v = d[ok], v[ok]
    if not len(d):
        return Sequential(math.nan, math.nan, math.nan, level, tau, 0)
    t2 = tau * tau
    log_lr = 0.5 * np.log(v / (v + t2)) + t2 * (d - null) ** 2 / (2 * v * (v + t2))
    p = float(np.exp(-np.maximum(log_lr, 0.0)).min())
    half = np.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * np.log((v + t2) / v)))
    return Sequential(p, float((d - half).max()), float((d + half).min()), level, tau, len(d))


# -- power and sample size (normal approximation, two-sided, equal arms) ----------------------
#
# Rates: n = (z_a sqrt(2 pbar (1 - pbar)) + z_b sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / d^2 with
# pbar = (p1 + p2) / 2 (the pooled variance under the null, Fleiss' formula without continuity
# correction). Means: n = 2 sd^2 (z_a + z_b)^2 / d^2. With ``arms`` > 2 (one control) each
# comparison is tested at alpha / (arms - 1) (Bonferroni, which Holm's correction never needs
# more than).


@dataclass(frozen=True)
class Plan:
    """An experiment's size: per-arm sample size and the smallest effect it detects."""

    metric: str  # "rate" or "mean"
    baseline: float  # the control's rate or mean
    sd: float | None  # a mean's standard deviation per unit
    effect: float  # absolute
    relative_effect: float | None
    n_per_arm: int
    arms: int
    alpha: float  # overall; each comparison at alpha / (arms - 1)
    power: float

    @property
    def total(self) -> int:
        return self.n_per_arm * self.arms


def _levels(alpha: float, power: float, arms: int) -> tuple[float, float]:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise DataError(f"alpha and power must be between 0 and 1, got {alpha} and {power}")
    if arms < 2:
        raise DataError(f"arms: expected at least 2 (a control and a treatment), got {arms}")
    return float(stats.norm.ppf(1 - alpha / (arms - 1) / 2)), float(stats.norm.ppf(power))


def _rate_check(baseline: float, effect: float | None = None) -> None:
    if not 0 < baseline < 1:
        raise DataError(f"baseline: expected a rate between 0 and 1, got {baseline}")
    if effect is not None and not (effect != 0 and 0 < baseline + effect < 1):
        raise DataError(
            f"effect: expected a non-zero change that keeps the rate within (0, 1), got "
            f"{effect:+g} on a baseline of {baseline:g}"
        )


def power_rates(baseline: float, effect: float, n: float, *, alpha: float = 0.05) -> float:
    """Power of the two-proportion z-test with ``n`` per arm to detect ``effect`` (absolute)."""
    _rate_check(baseline, effect)
    z_a = float(stats.norm.ppf(1 - alpha / 2))
    p1, p2 = baseline, baseline + effect
    pbar = (p1 + p2) / 2
    se0 = math.sqrt(2 * pbar * (1 - pbar) / n)
    se1 = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    return float(stats.norm.cdf((abs(effect) - z_a * se0) / se1))


def power_means(sd: float, effect: float, n: float, *, alpha: float = 0.05) -> float:
    """Power of the two-sample test with ``n`` per arm to detect ``effect`` in means."""
    z_a = float(stats.norm.ppf(1 - alpha / 2))
    return float(stats.norm.cdf(abs(effect) / (sd * math.sqrt(2 / n)) - z_a))


def plan_experiment(
    baseline: float,
    *,
    mde: float | None = None,
    n: int | None = None,
    relative: bool = False,
    sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    arms: int = 2,
) -> Plan:
    """Sample size per arm for the effect ``mde``, or the effect detectable with ``n`` per arm.

    A rate when ``sd`` is None (``baseline`` in (0, 1)), else a mean with standard deviation
    ``sd``. ``mde`` is absolute, or relative to ``baseline`` with ``relative``; a detectable
    effect is reported as an increase.
    """
    if (mde is None) == (n is None):
        raise DataError("give either the minimum detectable effect (mde) or n per arm, not both")
    z_a, z_b = _levels(alpha, power, arms)
    kind = "rate" if sd is None else "mean"
    if sd is not None and not sd > 0:
        raise DataError(f"sd: expected a standard deviation > 0, got {sd}")
    if kind == "rate":
        _rate_check(baseline)
    if mde is not None:
        effect = mde * baseline if relative else mde
        if sd is None:
            _rate_check(baseline, effect)
            p1, p2 = baseline, baseline + effect
            pbar = (p1 + p2) / 2
            root = z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(
                p1 * (1 - p1) + p2 * (1 - p2)
            )
            size = (root / effect) ** 2
        else:
            if effect == 0:
                raise DataError("mde: expected a non-zero effect, got 0")
            size = 2 * (sd * (z_a + z_b) / effect) ** 2
        n_arm = math.ceil(size - 1e-9)
    else:
        assert n is not None
        if n < 2:
            raise DataError(f"n: expected at least 2 units per arm, got {n}")
        n_arm = int(n)
        a = alpha / (arms - 1)
        if sd is None:
            from scipy.optimize import brentq

            top = (1 - baseline) * (1 - 1e-12)
            if power_rates(baseline, top, n_arm, alpha=a) < power:
                raise DataError(
                    f"n = {n_arm} per arm cannot reach power {power} for any increase of a "
                    f"{baseline:g} rate; use more units"
                )
            effect = float(
                brentq(lambda d: power_rates(baseline, d, n_arm, alpha=a) - power, 1e-12, top)
            )
        else:
            effect = (z_a + z_b) * sd * math.sqrt(2 / n_arm)
    rel = effect / baseline if baseline else None
    return Plan(kind, baseline, sd, effect, rel, n_arm, arms, alpha, power)
