"""Experiment statistics against published values, scipy, closed forms and seeded simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats

from nextbest.errors import DataError
from nextbest.measure import stats as st

REPS = 400


# -- intervals and tests against published values and scipy ----------------------------------


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
    # method 3 (Wilson score without continuity correction)
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe(k: int, n: int, low: float, high: float) -> None:
    e = st.proportion_interval(k, n)
    assert (round(e.low, 4), round(e.high, 4)) == (low, high)
    assert e.value == k / n


def test_mean_interval_and_welch_match_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.gamma(2.0, 3.0, 300), rng.gamma(2.0, 2.5, 450)
    e = st.mean_interval(st.Sample.of(a))
    assert (e.low, e.high) == pytest.approx(
        stats.t.interval(0.95, len(a) - 1, a.mean(), stats.sem(a)), rel=1e-12
    )
    lift = st.compare(st.Sample.of(a), st.Sample.of(b), binary=False)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert lift.test.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert lift.test.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert lift.test.df == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (lift.absolute.low, lift.absolute.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    # relative lift, delta method, by hand
    ma, mb = a.mean(), b.mean()
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va / mb**2 + ma**2 * vb / mb**4)
    assert lift.relative.value == pytest.approx(ma / mb - 1)
    assert lift.relative.se == pytest.approx(se)
    assert lift.relative.high - lift.relative.value == pytest.approx(1.959964 * se, rel=1e-6)


def test_two_proportion_z_is_pearsons_chi_square() -> None:
    x_t, n_t, x_c, n_c = 268, 21_307, 122, 21_306  # Hillstrom's men's e-mail against none
    lift = st.compare(st.Sample.of_counts(x_t, n_t), st.Sample.of_counts(x_c, n_c), binary=True)
    table = [[x_t, n_t - x_t], [x_c, n_c - x_c]]
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert lift.test.statistic**2 == pytest.approx(chi2, rel=1e-10)
    assert lift.test.p_value == pytest.approx(p, rel=1e-8)
    se = math.sqrt(x_t * (n_t - x_t) / n_t**3 + x_c * (n_c - x_c) / n_c**3)
    assert lift.absolute.se == pytest.approx(se)
    assert lift.absolute.low == pytest.approx(x_t / n_t - x_c / n_c - 1.959964 * se, rel=1e-6)


def test_holm_step_down_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert st.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert st.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = st.holm([0.02, math.nan])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


# -- coverage on simulated A/B tests with a known effect ---------------------------------------


def test_rate_intervals_cover_the_truth_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    n, p_c, p_t = 5_000, 0.04, 0.05
    x_c, x_t = rng.binomial(n, p_c, REPS), rng.binomial(n, p_t, REPS)
    hits = np.zeros(4)
    for a, b in zip(x_t, x_c, strict=True):
        lift = st.compare(st.Sample.of_counts(a, n), st.Sample.of_counts(b, n), binary=True)
        hits += [
            lift.absolute.covers(p_t - p_c),
            lift.relative.covers(p_t / p_c - 1),
            st.proportion_interval(a, n).covers(p_t),
            st.proportion_interval(b, n).covers(p_c),
        ]
    assert np.all((hits / REPS >= 0.93) & (hits / REPS <= 0.97)), hits / REPS


def test_mean_intervals_cover_the_truth_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(8)
    n = 800  # skewed spend: lognormal with mean exp(mu + 1/2)
    mu_c, mu_t = 0.0, 0.1
    t = rng.lognormal(mu_t, 1.0, (REPS, n))
    c = rng.lognormal(mu_c, 1.0, (REPS, n))
    truth = math.exp(mu_t + 0.5) - math.exp(mu_c + 0.5)
    rel_truth = math.exp(mu_t - mu_c) - 1
    hits = np.zeros(3)
    for a, b in zip(t, c, strict=True):
        lift = st.compare(st.Sample.of(a), st.Sample.of(b), binary=False)
        hits += [
            lift.absolute.covers(truth),
            lift.relative.covers(rel_truth),
            st.mean_interval(st.Sample.of(b)).covers(math.exp(mu_c + 0.5)),
        ]
    assert np.all((hits / REPS >= 0.93) & (hits / REPS <= 0.97)), hits / REPS


# -- CUPED -------------------------------------------------------------------------------------


def test_cuped_removes_the_explained_variance_without_bias() -> None:
    rng = np.random.default_rng(3)
    n, effect, rho = 4_000, 0.1, 0.7
    plain, adjusted, reductions = [], [], []
    for _ in range(200):
        x = rng.normal(size=n)
        arm = rng.random(n) < 0.5
        y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n) + effect * arm
        c = st.cuped(y, x, arm)
        # theta by hand: the arms' covariances over their variances, each over its n
        t, k = (y[arm], x[arm]), (y[~arm], x[~arm])
        cov = sum(np.cov(a, b)[0, 1] / len(a) for a, b in (t, k))
        var = sum(np.var(b, ddof=1) / len(b) for _, b in (t, k))
        assert c.theta == pytest.approx(cov / var)
        adj_t, adj_c = c.adjusted[arm], c.adjusted[~arm]
        before = np.var(t[0], ddof=1) / len(t[0]) + np.var(k[0], ddof=1) / len(k[0])
        after = np.var(adj_t, ddof=1) / len(adj_t) + np.var(adj_c, ddof=1) / len(adj_c)
        assert c.variance_reduction == pytest.approx(1 - after / before)
        reductions.append(c.variance_reduction)
        plain.append(y[arm].mean() - y[~arm].mean())
        adjusted.append(c.adjusted[arm].mean() - c.adjusted[~arm].mean())
    plain_a, adjusted_a = np.array(plain), np.array(adjusted)
    assert np.mean(reductions) == pytest.approx(rho**2, abs=0.01)
    # unbiased: the mean over replications is within 3 standard errors of the effect
    assert abs(adjusted_a.mean() - effect) < 3 * adjusted_a.std() / math.sqrt(len(adjusted_a))
    # and the spread shrinks by sqrt(1 - rho^2)
    assert adjusted_a.std() / plain_a.std() == pytest.approx(math.sqrt(1 - rho**2), abs=0.08)


def test_cuped_without_pre_period_variation_changes_nothing() -> None:
    y = np.arange(10.0)
    c = st.cuped(y, np.zeros(10), np.arange(10) % 2)
    assert c.theta == 0.0 and c.variance_reduction == 0.0
    np.testing.assert_array_equal(c.adjusted, y)


# -- sample ratio mismatch ---------------------------------------------------------------------


def test_a_half_point_skew_on_200k_fires_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    srm = st.sample_ratio_test(
        {"control": 101_000, "treated": 99_000}, {"control": 1, "treated": 1}
    )
    # chi-square by hand: 2 x 1000^2 / 100000 = 20 on one degree of freedom
    assert srm.chi2 == pytest.approx(20.0)
    assert srm.p_value == pytest.approx(stats.chi2.sf(20.0, 1))
    assert srm.mismatch and "SAMPLE RATIO MISMATCH" in caplog.text


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    weights=hs.lists(hs.floats(0.05, 1.0), min_size=2, max_size=5),
    n=hs.integers(10_000, 1_000_000),
    deviation=hs.lists(hs.floats(-2.0, 2.0), min_size=5, max_size=5),
)
def test_a_fair_split_never_fires(weights: list[float], n: int, deviation: list[float]) -> None:
    """Counts within 2 binomial sd of the weights: chi2 <= 4 (arms - 1), p > 0.001 up to 5 arms.

    The deviations are made to sum to 0 by taking ``share * sum(dev)`` from each arm, which can
    only lower Pearson's statistic (``sum dev^2 / (n share) - sum(dev)^2 / n``); taking the mean
    from each could push a small arm past its own 2 sd (weights 1, 0.0625, 1 broke the bound).
    """
    share = np.array(weights) / sum(weights)
    dev = np.array(deviation[: len(share)]) * np.sqrt(n * share * (1 - share))
    counts = np.round(n * share + dev - share * dev.sum()).astype(int)
    srm = st.sample_ratio_test(
        {f"a{i}": int(c) for i, c in enumerate(counts)}, {f"a{i}": w for i, w in enumerate(weights)}
    )
    assert not srm.mismatch, srm


@settings(max_examples=60, deadline=None)
@given(
    control=hs.floats(0.1, 0.5),
    skew=hs.floats(0.01, 0.05),
    scale=hs.floats(1.0, 10.0),
)
def test_a_skewed_split_always_fires(control: float, skew: float, scale: float) -> None:
    """The control ``skew`` (relative) above its weight is ``skew sqrt(n c / (1 - c))`` sd off:
    from 4.5 sd on (``n`` large enough, at least 200k) the test fires."""
    n = round(max(200_000, (4.5 / skew) ** 2 * (1 - control) / control) * scale)
    k = round(n * control * (1 + skew))
    srm = st.sample_ratio_test({"c": k, "t": n - k}, {"c": control, "t": 1 - control})
    assert srm.mismatch, srm


def test_fair_random_splits_fire_at_the_threshold_rate() -> None:
    rng = np.random.default_rng(11)
    counts = rng.multinomial(100_000, [0.2, 0.4, 0.4], size=2_000)
    fired = sum(
        st.sample_ratio_test(
            dict(zip("abc", map(int, c), strict=True)), {"a": 1, "b": 2, "c": 2}
        ).mismatch
        for c in counts
    )
    assert fired <= 8  # 0.1% of 2,000 is 2; at most 8 (Poisson p < 0.001)


def test_an_arm_without_a_weight_is_named() -> None:
    with pytest.raises(
        DataError, match="arm\\(s\\) 'c' have no weight; weights given for 'a', 'b'"
    ):
        st.sample_ratio_test({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1})


# -- the always-valid sequential test ----------------------------------------------------------


def _looks(rng: np.random.Generator, effect: float, reps: int, looks: int, per_look: int) -> tuple:
    """Difference-in-means estimates and variances at each look, per replication."""
    t = rng.normal(effect, 1.0, (reps, looks * per_look))
    c = rng.normal(0.0, 1.0, (reps, looks * per_look))
    n = per_look * np.arange(1, looks + 1)
    idx = n - 1

    def run(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, s2 = np.cumsum(v, axis=1)[:, idx], np.cumsum(v * v, axis=1)[:, idx]
        mean = s / n
        return mean, (s2 - n * mean**2) / (n - 1) / n

    (mt, vt), (mc, vc) = run(t), run(c)
    return mt - mc, vt + vc


def test_peeking_20_times_keeps_the_type_one_error_below_alpha() -> None:
    rng = np.random.default_rng(5)
    d, v = _looks(rng, 0.0, reps=1_000, looks=20, per_look=100)
    rejected = covered = naive = 0
    for i in range(len(d)):
        s = st.sequential_test(d[i], v[i], tau=0.1, level=0.95)
        rejected += s.p_value <= 0.05
        covered += s.low <= 0.0 <= s.high
        # the naive fixed-horizon test, peeked at 20 times, rejects far more often
        naive += np.any(np.abs(d[i]) / np.sqrt(v[i]) > 1.959964)
    assert rejected / len(d) <= 0.05 + 0.015
    assert covered / len(d) >= 0.95 - 0.015
    assert naive / len(d) > 0.15


def test_the_sequential_test_detects_a_real_effect_and_its_sequence_holds_it() -> None:
    rng = np.random.default_rng(6)
    d, v = _looks(rng, 0.2, reps=200, looks=20, per_look=100)
    results = [st.sequential_test(d[i], v[i], tau=0.1) for i in range(len(d))]
    assert np.mean([r.p_value < 0.05 for r in results]) > 0.9
    assert np.mean([r.low <= 0.2 <= r.high for r in results]) >= 0.95
    # one look: Lambda by hand
    one = st.sequential_test([0.3], [0.01], tau=0.2)
    lam = math.sqrt(0.01 / 0.05) * math.exp(0.04 * 0.09 / (2 * 0.01 * 0.05))
    assert one.p_value == pytest.approx(1 / lam)


# -- power and sample size ---------------------------------------------------------------------


def test_rate_sample_size_matches_the_closed_forms() -> None:
    p = st.plan_experiment(0.10, mde=0.01)
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    # Fleiss without continuity correction, by hand
    root = za * math.sqrt(2 * 0.105 * 0.895) + zb * math.sqrt(0.1 * 0.9 + 0.11 * 0.89)
    assert p.n_per_arm == math.ceil((root / 0.01) ** 2) == 14_751
    # statsmodels' NormalIndPower on Cohen's h (arcsine) gives nearly the same
    h = 2 * math.asin(math.sqrt(0.11)) - 2 * math.asin(math.sqrt(0.10))
    assert p.n_per_arm == pytest.approx(2 * ((za + zb) / h) ** 2, rel=0.005)
    relative = st.plan_experiment(0.10, mde=0.1, relative=True)
    assert relative.n_per_arm == p.n_per_arm
    # three arms: each comparison at alpha / 2
    three = st.plan_experiment(0.10, mde=0.01, arms=3)
    za3 = stats.norm.ppf(1 - 0.025 / 2)
    root3 = za3 * math.sqrt(2 * 0.105 * 0.895) + zb * math.sqrt(0.1 * 0.9 + 0.11 * 0.89)
    assert three.n_per_arm == math.ceil((root3 / 0.01) ** 2) and three.total == 3 * three.n_per_arm
    # the inverse: the effect detectable with that n is the effect asked for
    back = st.plan_experiment(0.10, n=p.n_per_arm)
    assert back.effect == pytest.approx(0.01, rel=1e-3)


def test_mean_sample_size_matches_the_closed_form_and_the_t_test() -> None:
    p = st.plan_experiment(20.0, mde=2.0, sd=12.0)
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    assert p.n_per_arm == math.ceil(2 * (12.0 * (za + zb) / 2.0) ** 2)
    # the exact power of the t-test at that n (noncentral t) is 0.8 to within half a point
    df, nc = 2 * p.n_per_arm - 2, (2.0 / 12.0) * math.sqrt(p.n_per_arm / 2)
    crit = stats.t.ppf(0.975, df)
    exact = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    assert exact == pytest.approx(0.8, abs=0.005)
    assert st.plan_experiment(20.0, n=p.n_per_arm, sd=12.0).effect == pytest.approx(2.0, rel=2e-3)


def test_the_computed_n_reaches_the_requested_power_in_simulation() -> None:
    rng = np.random.default_rng(9)
    rate = st.plan_experiment(0.05, mde=0.01, power=0.8)
    n = rate.n_per_arm
    x_c, x_t = rng.binomial(n, 0.05, 4_000), rng.binomial(n, 0.06, 4_000)
    pooled = (x_c + x_t) / (2 * n)
    z = (x_t - x_c) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    assert np.mean(np.abs(z) > 1.959964) == pytest.approx(0.8, abs=0.02)
    mean = st.plan_experiment(0.0, mde=0.25, sd=1.0, power=0.9)
    a = rng.normal(0.25, 1.0, (2_000, mean.n_per_arm))
    b = rng.normal(0.0, 1.0, (2_000, mean.n_per_arm))
    rejected = stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.9, abs=0.02)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline": 0.1}, "give either the minimum detectable effect (mde) or n per arm"),
        ({"baseline": 0.1, "mde": 0.01, "n": 100}, "give either the minimum detectable effect"),
        ({"baseline": 1.5, "mde": 0.01}, "baseline: expected a rate between 0 and 1, got 1.5"),
        ({"baseline": 0.95, "mde": 0.1}, "keeps the rate within (0, 1), got +0.1 on a baseline"),
        ({"baseline": 0.1, "mde": 0.01, "arms": 1}, "arms: expected at least 2"),
        ({"baseline": 0.1, "mde": 0.01, "power": 1.2}, "alpha and power must be between 0 and 1"),
        ({"baseline": 5.0, "mde": 1.0, "sd": -1.0}, "sd: expected a standard deviation > 0"),
        ({"baseline": 0.5, "n": 3}, "n = 3 per arm cannot reach power 0.8"),
    ],
)
def test_bad_plans_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError) as info:
        st.plan_experiment(**kwargs)
    assert message in str(info.value)
