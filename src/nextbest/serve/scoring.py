"""The propensity model as the real-time service calls it: tens of rows at a time, one thread.

A batch scores millions of rows and spreads them over threads; a request scores the tens of
offers open to one customer, for which waking threads costs more than it gives.
:func:`compiled_forest` compiles the model's trees (:meth:`nextbest.models.forest.Forest.raw`,
LightGBM's raw scores to the last bit, walked on the calling thread) before the first request,
and :func:`isotonic_clip` takes its isotonic calibration as ``np.interp`` arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nextbest.errors import DataError

__all__ = ["compiled_forest", "isotonic_clip"]


def isotonic_clip(model: Any) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """The isotonic calibration of a LightGBM-backed model as ``np.interp`` arguments, or
    None when the model is anything else (it is then called as it is)."""
    from sklearn.isotonic import IsotonicRegression

    calibrator = getattr(model, "calibrator_", None)
    booster = getattr(getattr(model, "booster_", None), "booster_", None)
    if (
        booster is None
        or not hasattr(booster, "predict")
        or not isinstance(calibrator, IsotonicRegression)
        or calibrator.out_of_bounds != "clip"
    ):
        return None
    x = np.asarray(calibrator.X_thresholds_, dtype=np.float64)
    y = np.asarray(calibrator.y_thresholds_, dtype=np.float64)
    return x, y, float(calibrator.X_min_), float(calibrator.X_max_)


def compiled_forest(model: Any, sample: np.ndarray) -> Any:
    """The model's trees as compiled arrays (``model.forest()``), compiled on ``sample`` now
    rather than in a request; None when the model has none."""
    make = getattr(model, "forest", None)
    if not callable(make):
        return None
    try:
        forest = make()
        forest.raw(np.ascontiguousarray(sample, dtype=np.float32), threads=False)
    except DataError:  # not a binary LightGBM classifier
        return None
    return forest
