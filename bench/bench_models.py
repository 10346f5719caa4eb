"""Benchmark: propensity training on ~5M logged decisions, and scoring throughput.

A simulated retailer (250,000 members over 12 days, about 9M decisions) is loaded into a fresh
workspace; the propensity model is trained on the first 8 days (about 6M rows), calibrated on
the next 2 and scored on the last 2. Reported: the time to build the decision features, to
train (trees and calibration), peak memory, and scoring throughput in rows per second.

The reference, run in the same process on the same frames, is LightGBM on its own: fitting
the same trees with no calibration and no feature bookkeeping, and its raw ``predict_proba``.
The ratios say what the calibrated, schema-checked model costs over the bare library.

Usage: python bench/bench_models.py [--customers 250000] [--days 12]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import lightgbm as lgb
from _memory import peak_gb

from nextbest.data.ingest import ingest
from nextbest.data.workspace import Workspace
from nextbest.features import decision_features
from nextbest.features.decision_features import decision_days
from nextbest.models import CalibratedBoostedClassifier, probability_metrics
from nextbest.models.propensity import feature_columns
from nextbest.simulate import SimConfig, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=250_000)
    parser.add_argument("--days", type=int, default=12)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nextbest-bench-models-"))
    try:
        t = time.perf_counter()
        simulate(SimConfig(n_customers=args.customers, days=args.days, seed=3), root / "sim")
        ws = Workspace.init(root / "ws")
        ingest(ws.warehouse, [root / "sim"], ws.config.ingest)
        print(
            f"simulated and loaded {args.customers:,} members x {args.days} days: "
            f"{time.perf_counter() - t:.1f} s"
        )
        days = decision_days(ws.warehouse)
        one = timedelta(days=1)
        t = time.perf_counter()
        train = decision_features(ws.warehouse, days[0], days[-4] + one)
        cal = decision_features(ws.warehouse, days[-3], days[-2])
        test = decision_features(ws.warehouse, days[-2], days[-1] + one)
        built = time.perf_counter() - t
        cols = feature_columns(train)
        rows = len(train) + len(cal) + len(test)
        print(
            f"decision features: {rows:,} rows x {len(cols)} features in {built:.1f} s "
            f"({rows / built:,.0f} rows/s), peak RSS {peak_gb():.2f} GB"
        )

        t = time.perf_counter()
        model = CalibratedBoostedClassifier(random_state=0).fit(
            train[cols], train.response, X_calibration=cal[cols], y_calibration=cal.response
        )
        ours = time.perf_counter() - t
        print(
            f"propensity training on {len(train):,} rows: {ours:.1f} s, peak RSS {peak_gb():.2f} GB"
        )

        frame = model._frame(train[cols])
        t = time.perf_counter()
        bare = lgb.LGBMClassifier(**model.booster_.get_params()).fit(frame, train.response)
        reference = time.perf_counter() - t
        print(
            f"reference (LightGBM alone, same trees): {reference:.1f} s; "
            f"ratio {ours / reference:.2f}x"
        )

        t = time.perf_counter()
        p = model.predict_proba(test[cols])[:, 1]
        scoring = time.perf_counter() - t
        test_frame = model._frame(test[cols])
        t = time.perf_counter()
        bare.predict_proba(test_frame)
        raw = time.perf_counter() - t
        print(
            f"scoring {len(test):,} rows: {len(test) / scoring:,.0f} rows/s "
            f"(LightGBM alone {len(test) / raw:,.0f} rows/s; ratio {scoring / raw:.2f}x)"
        )
        m = probability_metrics(test.response.to_numpy(), p)
        print(
            f"held-out: AUC {m.auc:.4f}, log loss {m.log_loss:.5f}, Brier {m.brier:.5f}, "
            f"ECE {m.ece:.6f}, base rate {m.base_rate:.5f}"
        )
        print(f"peak RSS {peak_gb():.2f} GB")
        ws.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
