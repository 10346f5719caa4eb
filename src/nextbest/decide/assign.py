"""Assignment to the arms of an experiment by hashing: the same arm on every run and machine.

A customer's position ``u = hash(salt, experiment, customer) / 2**64`` lies in ``[0, 1)``;
the arms, in the order given, cut ``[0, 1)`` into consecutive intervals as long as their
normalised weights, and the customer gets the arm whose interval holds ``u``. The hash is
pandas' SipHash of the customer id keyed by the first 16 hex digits of
``md5(f"{salt}:{experiment}")``, the same as :func:`nextbest.decide.day.holdout_mask`: with
arms ``{"holdout": h, ...}`` the first interval is ``[0, h)``, so the customers held out are
exactly those of the holdout mask. Changing the salt or the experiment name reshuffles
everyone; changing the weights moves only the customers near the boundaries.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from nextbest.errors import ConfigError

__all__ = ["arm_bounds", "assign", "hash_position"]


def hash_position(customer_ids: np.ndarray, experiment: str, salt: str) -> np.ndarray:
    """``hash(salt, experiment, customer) / 2**64`` in ``[0, 1)``, per customer."""
    key = hashlib.md5(f"{salt}:{experiment}".encode()).hexdigest()[:16]
    h = pd.util.hash_array(np.asarray(customer_ids, dtype=object), hash_key=key)
    return np.asarray(h / np.float64(2**64), dtype=np.float64)


def arm_bounds(arms: Mapping[str, float]) -> np.ndarray:
    """The upper boundary of each arm's share of [0, 1) (the last one infinite)."""
    if not arms:
        raise ConfigError("arms: expected at least one arm name -> weight, got none")
    bad = {
        k: v
        for k, v in arms.items()
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0)
    }
    if bad:
        raise ConfigError(f"arms: every weight must be a number > 0, got {bad}")
    weights = np.asarray(list(arms.values()), dtype=np.float64)
    total = weights.sum()
    cum = np.cumsum(weights)
    # Weights that already sum to 1 are used as given, so that {"holdout": h, ...} puts the
    # first boundary at exactly h (as holdout_mask does) rather than at h / (1 +- 1e-16).
    bounds = cum if abs(total - 1.0) < 1e-9 else cum / total
    bounds[-1] = np.inf  # u == 1.0 after float rounding still lands in the last arm
    return bounds


def assign(
    customer_ids: np.ndarray,
    experiment: str,
    salt: str,
    arms: Mapping[str, float],
    *,
    names: bool = False,
) -> np.ndarray:
    """The arm of every customer: its index in ``arms`` (or its name with ``names=True``).

    Parameters
    ----------
    customer_ids
        Customer ids (anything with a stable string form; hashed as objects).
    experiment, salt
        Name of the experiment and the salt of its assignment.
    arms
        Ordered mapping arm name -> weight (> 0, normalised to shares).

    Returns
    -------
    numpy.ndarray
        int64 arm indices, or the arm names as an object array.
    """
    bounds = arm_bounds(arms)
    u = hash_position(customer_ids, experiment, salt)
    index = np.searchsorted(bounds, u, side="right").astype(np.int64)
    if names:
        return np.asarray(list(arms), dtype=object)[index]
    return index
