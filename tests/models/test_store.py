"""The model store: versions grow, manifests say what a model was trained on, mismatches fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nextbest.errors import ConfigError, DataError
from nextbest.models import CalibratedBoostedClassifier
from nextbest.models.store import ModelStore, data_hash


def _fitted(seed: int) -> tuple[CalibratedBoostedClassifier, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x": rng.normal(size=2_000), "region": rng.choice(["n", "s"], 2_000)})
    y = (rng.random(2_000) < 1 / (1 + np.exp(-2 * X.x))).astype(int)
    model = CalibratedBoostedClassifier(n_estimators=20, n_jobs=1).fit(X, y)
    return model, X


def test_versions_grow_and_load_the_same_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    saved = []
    for seed in (1, 2):
        model, X = _fitted(seed)
        saved.append(
            store.save(
                "propensity",
                model,
                window={"train": "2026-01-01..2026-01-10"},
                features=model.features_,
                metrics={"auc": 0.7 + seed / 100},
                data_hash=data_hash(X),
            )
        )
    assert [m.version for m in saved] == [1, 2]
    assert [(m.kind, m.version) for m in store.list()] == [("propensity", 1), ("propensity", 2)]
    loaded, manifest = store.load("propensity")
    assert manifest.version == 2 and manifest.metrics == {"auc": pytest.approx(0.72)}
    assert manifest.features == {"x": "numeric", "region": "categorical"}
    assert {"python", "lightgbm", "scikit-learn", "numpy"} <= set(manifest.libraries)
    model, X = _fitted(2)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    first, _ = store.load("propensity", version=1)
    assert not np.array_equal(first.predict_proba(X), model.predict_proba(X))
    on_disk = json.loads((tmp_path / "models/propensity/v0002/manifest.json").read_text())
    assert on_disk["data_hash"] == data_hash(X) != data_hash(_fitted(1)[1])


def test_data_hash_follows_content_and_columns() -> None:
    a = pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]})
    assert data_hash(a) == data_hash(a.copy())
    assert data_hash(a) != data_hash(a.assign(x=[1.0, 2.5]))
    assert data_hash(a) != data_hash(a.rename(columns={"y": "z"}))


def test_mismatched_features_and_missing_models_are_named(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ConfigError, match=r"no trained 'propensity' model .* none yet\); run"):
        store.load("propensity")
    model, X = _fitted(1)
    store.save("propensity", model, window={}, features=model.features_, metrics={}, data_hash="")
    with pytest.raises(ConfigError, match="propensity has no version 7; versions: 1"):
        store.load("propensity", version=7)
    with pytest.raises(ConfigError, match="model kind must be lower-case"):
        store.save("Bad Kind", model, window={}, features={}, metrics={}, data_hash="")
    _, manifest = store.load("propensity")
    manifest.check_features(X.columns)
    with pytest.raises(
        DataError,
        match=r"propensity v1 was trained on 2 features and the data "
        r"lacks 1: region; rebuild",
    ):
        manifest.check_features(["x", "other"])
