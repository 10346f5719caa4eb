"""Propensity against the simulator's truth: ranking, calibration, cold start, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from nextbest.data.workspace import Workspace
from nextbest.errors import DataError, NotFittedError
from nextbest.models import CalibratedBoostedClassifier, PropensityResult, train_propensity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(sim_workspace: tuple[Workspace, Path]) -> tuple[PropensityResult, pd.DataFrame]:
    ws, sim = sim_workspace
    result = train_propensity(
        ws.warehouse,
        holdout_days=5,
        calibration_days=3,
        max_train_days=10,
        keep_holdout=True,
        model=CalibratedBoostedClassifier(n_jobs=1, n_estimators=200),
    )
    truth = pq.read_table(sim / "truth" / "decisions.parquet").to_pandas()
    assert result.holdout is not None
    return result, result.holdout.merge(truth, on="decision_id", validate="one_to_one")


def test_ranks_close_to_the_true_probabilities(trained) -> None:
    result, holdout = trained
    true_auc = roc_auc_score(holdout.response, holdout.p_click)
    print(f"held-out AUC {result.metrics.auc:.4f}, AUC of the true probabilities {true_auc:.4f}")
    assert result.metrics.n == len(holdout) > 100_000
    assert result.metrics.auc > true_auc - 0.09
    assert result.metrics.auc > 0.68


def test_probabilities_are_calibrated(trained) -> None:
    result, holdout = trained
    m = result.metrics
    print(m)
    assert abs(m.mean_prediction - m.base_rate) < 0.15 * m.base_rate
    assert m.ece < 0.2 * m.base_rate
    # calibrated against the truth too: per decile of prediction, the mean true probability
    decile = pd.qcut(holdout.prediction.rank(method="first"), 10, labels=False)
    by = holdout.groupby(decile)[["prediction", "p_click"]].mean()
    print(by)
    assert (by.prediction - by.p_click).abs().max() < 0.25 * holdout.p_click.mean()
    assert by.p_click.is_monotonic_increasing


def test_new_designers_score_better_than_by_category_popularity(trained) -> None:
    result, holdout = trained
    assert result.importances.index[0] != "slot"
    # offers of a brand never shown before their day: known only through their features
    new = holdout[holdout.pop_brand_ctr.isna()]
    assert len(new) > 5_000 and new.offer_new_designer.mean() > 0.8
    model_auc = roc_auc_score(new.response, new.prediction)
    popularity_auc = roc_auc_score(new.response, new.pop_category_ctr.fillna(0))
    true_auc = roc_auc_score(new.response, new.p_click)
    print(f"new brands: model {model_auc:.4f}, popularity {popularity_auc:.4f}")
    print(f"new brands: true probabilities {true_auc:.4f}")
    assert model_auc > popularity_auc + 0.05


def test_scoring_data_must_have_the_training_features(trained) -> None:
    result, holdout = trained
    rows = holdout.drop(columns=["open_rate_30", "aff_brand"]).head(10)
    with pytest.raises(DataError, match=r"the data lacks open_rate_30, aff_brand: rebuild"):
        result.model.predict_proba(rows)
    rows = holdout.head(10).assign(open_rate_30="high")
    with pytest.raises(DataError, match=r"wrong kind: open_rate_30 \(expected numeric"):
        result.model.predict_proba(rows)


def test_unfitted_and_bad_labels_are_clear_errors() -> None:
    X = pd.DataFrame({"x": np.arange(10.0)})
    with pytest.raises(NotFittedError, match="is not fitted yet: call fit"):
        CalibratedBoostedClassifier().predict_proba(X)
    with pytest.raises(DataError, match=r"y must be 0 or 1, got 2.0 at row 3"):
        CalibratedBoostedClassifier().fit(X, [0, 1, 0, 2, 0, 1, 0, 1, 0, 1])
    with pytest.raises(DataError, match="every training label is 0"):
        CalibratedBoostedClassifier().fit(X, np.zeros(10))
    with pytest.raises(DataError, match="calibration must be one of isotonic, sigmoid, none"):
        CalibratedBoostedClassifier(calibration="beta").fit(X, np.arange(10) % 2)


def test_new_members_score_better_than_by_popularity(trained) -> None:
    _, holdout = trained
    # members who joined in the week before: little history, known mostly by who they are
    new = holdout[holdout.tenure_days < 7]
    assert len(new) > 2_000
    model_auc = roc_auc_score(new.response, new.prediction)
    popularity_auc = roc_auc_score(new.response, new.pop_brand_ctr.fillna(0))
    print(f"new members: model {model_auc:.4f}, brand popularity {popularity_auc:.4f}")
    assert model_auc > popularity_auc


def test_a_day_over_the_row_limit_is_a_uniform_sample_the_same_every_run(
    sim_workspace: tuple[Workspace, Path],
) -> None:
    """Training reads at most about ``max_rows_per_day`` decisions a day (a 5M-member shop
    logs 15M), the same rows every run, with the features and labels of the full read."""
    from datetime import UTC, datetime

    from nextbest.features import decision_features

    ws, _ = sim_workspace
    start, end = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 12, tzinfo=UTC)
    full = decision_features(ws.warehouse, start, end)
    per_day = full.groupby("day").size()
    assert per_day.min() > 30_000  # 20,000 members x 3 slots a day
    most = 10_000
    sample = decision_features(ws.warehouse, start, end, max_rows_per_day=most)
    got = sample.groupby("day").size()
    assert ((got > 0.93 * most) & (got < 1.07 * most)).all(), got
    again = decision_features(ws.warehouse, start, end, max_rows_per_day=most)
    pd.testing.assert_frame_equal(sample, again)
    # a subset of the full read, row for row, and not a biased one: the click rate agrees
    same = full.set_index("decision_id").loc[sample.decision_id].reset_index()
    pd.testing.assert_frame_equal(same[sample.columns], sample, check_dtype=False)
    rate, n = full.response.mean(), len(sample)
    assert abs(sample.response.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
    # under the limit, nothing is left out
    whole = decision_features(ws.warehouse, start, end, max_rows_per_day=int(per_day.max()))
    pd.testing.assert_frame_equal(whole, full)
    with pytest.raises(DataError, match="max_rows_per_day must be at least 1, got 0"):
        decision_features(ws.warehouse, start, end, max_rows_per_day=0)
