"""The calibrated classifier stops adding trees when its calibration rows stop improving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from nextbest.errors import DataError
from nextbest.models import CalibratedBoostedClassifier


def _rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows whose true probability is known: a logistic model of two of eight features."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 8)), columns=[f"x{i}" for i in range(8)])
    truth = 1 / (1 + np.exp(-(-3.0 + 0.8 * X.x0 - 0.5 * X.x1)))
    return X, (rng.random(n) < truth).astype(int), truth.to_numpy()


@pytest.fixture(scope="module")
def fitted() -> dict[int, CalibratedBoostedClassifier]:
    X, y, _ = _rows(20_000, 1)
    X_cal, y_cal, _ = _rows(10_000, 2)
    return {
        rounds: CalibratedBoostedClassifier(
            n_estimators=300, early_stopping_rounds=rounds, n_jobs=1
        ).fit(X, y, X_calibration=X_cal, y_calibration=y_cal)
        for rounds in (0, 20)
    }


def test_early_stopping_keeps_fewer_trees_and_predicts_better(fitted) -> None:
    X, y, truth = _rows(40_000, 3)
    every, stopped = fitted[0], fitted[20]
    assert every.best_iteration_ == 300
    assert 5 <= stopped.best_iteration_ < 150
    assert len(stopped.forest().roots) == stopped.best_iteration_
    p_every = every.predict_proba(X)[:, 1]
    p_stopped = stopped.predict_proba(X)[:, 1]
    # against the truth on new rows: closer probabilities and a lower log loss
    err_every = np.abs(p_every - truth).mean()
    err_stopped = np.abs(p_stopped - truth).mean()
    assert err_stopped < 0.9 * err_every, (err_stopped, err_every)
    assert log_loss(y, p_stopped) < log_loss(y, p_every)


def test_the_kept_trees_are_what_lightgbm_predicts_with(fitted) -> None:
    model = fitted[20]
    X, _, _ = _rows(2_000, 4)
    coded = np.column_stack([model.encode(c, X[c]) for c in model.features_])
    raw = model.booster_.booster_.predict(coded, raw_score=True)
    np.testing.assert_array_equal(model.forest().raw(coded), raw)
    # the sums of leaves are the same bits; the sigmoid after them is numpy's exp against the
    # C library's, which differ in the last bit on CPUs where numpy runs exp in AVX-512
    np.testing.assert_allclose(
        model.predict_proba(X)[:, 1],
        model.predict_proba_raw(model.forest().raw(coded)),
        rtol=1e-12,
        atol=1e-12,
    )


def test_without_calibration_rows_every_tree_is_kept() -> None:
    X, y, _ = _rows(3_000, 5)
    model = CalibratedBoostedClassifier(calibration="none", n_estimators=40, n_jobs=1)
    assert model.fit(X, y).best_iteration_ == 40


@pytest.mark.parametrize("rounds", [-1, 2.5, True, "10"])
def test_bad_early_stopping_rounds_are_named(rounds) -> None:
    X, y, _ = _rows(500, 6)
    with pytest.raises(DataError, match=r"early_stopping_rounds must be an integer >= 0, got"):
        CalibratedBoostedClassifier(early_stopping_rounds=rounds).fit(X, y)
