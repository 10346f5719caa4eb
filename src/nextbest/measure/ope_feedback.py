"""The logged feedback that off-policy estimators read: a typed, validated structure.

:class:`LoggedFeedback` holds numpy arrays, one value per logged row (an item shown in a
context), per context, or per row and action, as its docstring says. It is checked when made:
a wrong length, a missing (NaN) or out-of-range probability, a zero or negative logged
propensity, or an action code out of range is a :class:`~nextbest.errors.DataError` naming the
field, what was expected and what was received. See :mod:`nextbest.measure.ope` for the
estimators and the definition of a policy's value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from nextbest.errors import DataError

__all__ = ["LoggedFeedback", "effective_sample_size"]


def _first_bad(name: str, values: np.ndarray, bad: np.ndarray, expected: str) -> DataError:
    rows = np.flatnonzero(bad)
    shown = "NaN (missing)" if np.isnan(values[rows[0]]) else repr(float(values[rows[0]]))
    return DataError(
        f"{name}: expected {expected}, got {shown} at row {rows[0]} ({len(rows)} of "
        f"{len(values)} rows like it)"
    )


def _floats(name: str, value: Any, shape: tuple[int, ...], expected: str) -> np.ndarray:
    """``value`` as a float array of ``shape``, finite; else an error naming the field."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name}: expected numbers, got {type(value).__name__}") from None
    if arr.shape != shape:
        what = "one per logged row" if len(shape) == 1 else "rows x actions"
        raise DataError(f"{name}: expected shape {shape} ({what}), got {arr.shape}")
    flat = arr.reshape(-1)
    bad = ~np.isfinite(flat)
    if bad.any():
        raise _first_bad(name, flat, bad, expected)
    return arr


def _probabilities(
    name: str, value: Any, shape: tuple[int, ...], *, positive: bool = False
) -> np.ndarray:
    expected = "probabilities in (0, 1]" if positive else "probabilities in [0, 1]"
    arr = _floats(name, value, shape, expected)
    flat = arr.reshape(-1)
    bad = ((flat <= 0) if positive else (flat < 0)) | (flat > 1 + 1e-9)
    if bad.any():
        raise _first_bad(name, flat, bad, expected)
    return arr


def _codes(name: str, value: Any, n: int, low: int, high: int | None, expected: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != (n,):
        raise DataError(f"{name}: expected {n} values, one per logged row, got shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name}: expected whole numbers ({expected}), got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < low) | (arr >= high if high is not None else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{name}: expected {expected}, got {arr[i]} at row {i}")
    return arr


@dataclass(frozen=True)
class LoggedFeedback:
    """Logged decisions, with what an evaluation needs of the policy and the reward model.

    Parameters
    ----------
    action
        Per row, the action shown, coded ``0 .. n_actions - 1``.
    position
        Per row, its position (1 first).
    reward
        Per row, the reward observed (1/0 for a click).
    propensity
        Per row, ``p_b(a, k | x)``: the logging policy's probability of showing this action in
        this position, in (0, 1].
    context
        Per row, its context, coded ``0 .. n_contexts - 1`` (default: each row its own).
    n_contexts
        Contexts in the log, including those without rows (default: the largest code + 1).
    n_actions
        Actions (default: the largest code + 1, or the columns of ``action_dist``).
    slate_propensity
        Per row, ``p_b(slate | x)`` of the whole slate of its context (for :class:`SlateIPS`).
    pi_e
        Per row, the evaluation policy's probability ``pi_e(a, k | x)`` of the logged action
        in the logged position (default: from ``action_dist``).
    action_dist
        Rows x actions: ``pi_e(., k | x)`` at each row's context and position.
    pi_e_slots
        Per context, how many positions the evaluation policy fills (SNIPS's normaliser;
        default: the rows logged in it).
    slate_pi_e
        Per row, ``pi_e(slate | x)`` of the logged slate of its context.
    q_hat
        Per row, the reward model's prediction for the logged action and position (default:
        from ``q_hat_all``).
    q_hat_all
        Rows x actions: the reward model at each row's context and position.
    q_hat_pi
        Per context, the reward model's expected total reward under ``pi_e`` (default: the sum
        over the context's rows of ``action_dist x q_hat_all``, right when ``pi_e`` fills
        exactly the positions logged).
    """

    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    context: np.ndarray | None = None
    n_contexts: int | None = None
    n_actions: int | None = None
    slate_propensity: np.ndarray | None = None
    pi_e: np.ndarray | None = None
    action_dist: np.ndarray | None = None
    pi_e_slots: np.ndarray | None = None
    slate_pi_e: np.ndarray | None = None
    q_hat: np.ndarray | None = None
    q_hat_all: np.ndarray | None = None
    q_hat_pi: np.ndarray | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        n = len(np.asarray(self.action).reshape(-1))
        a_dist = None if self.action_dist is None else np.asarray(self.action_dist)
        width = self.n_actions
        if width is None and a_dist is not None and a_dist.ndim == 2:
            width = a_dist.shape[1]
        raw_action = np.asarray(self.action)
        if width is None:
            width = int(raw_action.max()) + 1 if n and raw_action.dtype.kind in "iu" else 0
        set_(self, "n_actions", int(width))
        set_(self, "action", _codes("action", raw_action, n, 0, width, f"codes 0..{width - 1}"))
        set_(self, "position", _codes("position", self.position, n, 1, None, "positions >= 1"))
        set_(self, "reward", _floats("reward", self.reward, (n,), "a finite number"))
        set_(self, "propensity", _probabilities("propensity", self.propensity, (n,), positive=True))
        ctx = np.arange(n) if self.context is None else self.context
        top = int(np.max(ctx)) + 1 if n else 0
        n_ctx = top if self.n_contexts is None else int(self.n_contexts)
        if n_ctx < top:
            raise DataError(
                f"n_contexts: expected at least {top} (the largest context + 1), got {n_ctx}"
            )
        set_(self, "n_contexts", n_ctx)
        set_(self, "context", _codes("context", ctx, n, 0, n_ctx, f"codes 0..{n_ctx - 1}"))
        for name in ("slate_propensity", "slate_pi_e", "pi_e"):
            if getattr(self, name) is not None:
                positive = name == "slate_propensity"
                set_(self, name, _probabilities(name, getattr(self, name), (n,), positive=positive))
        if self.q_hat is not None:
            set_(self, "q_hat", _floats("q_hat", self.q_hat, (n,), "a finite number"))
        if a_dist is not None:
            set_(self, "action_dist", _probabilities("action_dist", a_dist, (n, width)))
        if self.q_hat_all is not None:
            set_(self, "q_hat_all", _floats("q_hat_all", self.q_hat_all, (n, width), "a number"))
        if self.q_hat_pi is not None:
            set_(self, "q_hat_pi", _floats("q_hat_pi", self.q_hat_pi, (n_ctx,), "a number"))
        if self.pi_e_slots is not None:
            slots = _floats("pi_e_slots", self.pi_e_slots, (n_ctx,), "a count >= 0")
            if (slots < 0).any():
                raise _first_bad("pi_e_slots", slots, slots < 0, "a count >= 0")
            set_(self, "pi_e_slots", slots)
        for name in ("slate_propensity", "slate_pi_e"):
            values = getattr(self, name)
            if values is not None and n:
                self._check_per_context(name, values)

    def _check_per_context(self, name: str, values: np.ndarray) -> None:
        ctx = self.context
        assert ctx is not None
        high = np.full(self.n_contexts or 0, -np.inf)
        low = np.full(self.n_contexts or 0, np.inf)
        np.maximum.at(high, ctx, values)
        np.minimum.at(low, ctx, values)
        bad = np.flatnonzero(high - low > 1e-12)
        if len(bad):
            raise DataError(
                f"{name}: expected one value per context (the whole slate's probability), got "
                f"{low[bad[0]]:g} and {high[bad[0]]:g} in context {bad[0]} ({len(bad)} contexts)"
            )

    def __len__(self) -> int:
        return len(self.action)

    def replace(self, **changes: Any) -> LoggedFeedback:
        """A copy with some fields changed (say, another policy's ``pi_e``), validated again."""
        return dataclasses.replace(self, **changes)

    # What estimators read, resolved from the fields given, or a clear error.

    def context_sum(self, values: np.ndarray) -> np.ndarray:
        """Per context, the sum of a per-row array."""
        return np.bincount(self.context, weights=values, minlength=self.n_contexts or 0)  # type: ignore[arg-type]

    def target_probability(self, needed_by: str) -> np.ndarray:
        if self.pi_e is not None:
            return self.pi_e
        if self.action_dist is not None:
            return self.action_dist[np.arange(len(self)), self.action]
        raise DataError(
            f"{needed_by} needs the evaluation policy's probability of every logged action: "
            "give pi_e (per row) or action_dist (rows x actions)"
        )

    def logged_prediction(self, needed_by: str) -> np.ndarray:
        if self.q_hat is not None:
            return self.q_hat
        if self.q_hat_all is not None:
            return self.q_hat_all[np.arange(len(self)), self.action]
        raise DataError(
            f"{needed_by} needs the reward model's prediction for every logged action: give "
            "q_hat (per row) or q_hat_all (rows x actions)"
        )

    def policy_prediction(self, needed_by: str) -> np.ndarray:
        if self.q_hat_pi is not None:
            return self.q_hat_pi
        if self.action_dist is not None and self.q_hat_all is not None:
            return self.context_sum((self.action_dist * self.q_hat_all).sum(axis=1))
        raise DataError(
            f"{needed_by} needs the reward model's expected reward under the evaluation policy: "
            "give q_hat_pi (per context), or action_dist and q_hat_all (rows x actions)"
        )

    def slots(self) -> np.ndarray:
        if self.pi_e_slots is not None:
            return self.pi_e_slots
        return np.bincount(self.context, minlength=self.n_contexts or 0).astype(np.float64)  # type: ignore[arg-type]


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size of importance weights, ``(sum w)^2 / sum w^2``."""
    w = np.asarray(weights, dtype=np.float64)
    square = float(np.dot(w, w))
    return float(w.sum() ** 2 / square) if square > 0 else 0.0
