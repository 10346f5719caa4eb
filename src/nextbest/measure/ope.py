r"""Off-policy evaluation: what a new policy would earn, estimated from logged decisions.

A log (:class:`~nextbest.measure.ope_feedback.LoggedFeedback`) has one row per item shown:
the *context* it was shown in (a customer's e-mail of a day, one Open Bandit impression), the
*action* (the item), its *position* (slot, 1 first), the *reward* (a click, a purchase) and
the probability the logging policy had of showing that item in that position,
``p_b(a, k | x)``.

The *value* of a policy is its expected total reward per context, summed over the positions it
fills. Under the item-position model (the reward of an item depends on the context, the item
and its position, not on the other items of the slate; Li et al. 2018, and OBP's
``position``), that sum is estimated position by position from the marginal probabilities, so
it is the sum over positions of the per-position estimates. For a log with one row per
context (Open Bandit: each impression is its own context) it is the mean reward per row, as
OBP reports it. A context may have no row (a control held out of the e-mail): it counts in
``N`` and an importance weight ``1 / (1 - holdout)`` in the mailed rows makes up for it.

With ``w = pi_e(a, k | x) / p_b(a, k | x)``, optionally clipped at ``clip``, ``N`` contexts and
``S`` the positions the evaluation policy fills in all of them (``pi_e_slots``):

- :class:`IPS`, inverse propensity scoring (Horvitz & Thompson 1952): ``sum w r / N``;
- :class:`SNIPS`, self-normalised (Swaminathan & Joachims 2015): ``sum w r / sum w x S / N``,
  whose normaliser ``sum w`` has expectation ``S``;
- :class:`DirectMethod`: ``sum_x qhat_pi(x) / N``, where ``qhat_pi(x)`` is a reward model's
  expected reward of the context under ``pi_e`` (``q_hat_pi``, or from ``action_dist`` and
  ``q_hat_all``);
- :class:`DoublyRobust` (Dudík, Langford & Li 2011):
  ``sum_x [qhat_pi(x) + sum_rows w (r - qhat(x, a, k))] / N``: unbiased when either the
  propensities or the reward model are right;
- :class:`SlateIPS`, standard IPS on whole slates: ``sum_x W(x) R(x) / N`` with
  ``W = pi_e(slate | x) / p_b(slate | x)`` and ``R`` the slate's total reward (unbiased
  without the item-position model, at the price of much larger weights).

``estimate_interval`` is a percentile bootstrap over contexts, not rows, so the rows of one
slate are resampled together. The reward model is held fixed in it (as in OBP), so the direct
method's interval shows the sampling of contexts only, not the error of its model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nextbest.errors import ConfigError, DataError
from nextbest.measure.ope_feedback import LoggedFeedback, effective_sample_size

__all__ = [
    "ESTIMATORS",
    "IPS",
    "SNIPS",
    "DirectMethod",
    "DoublyRobust",
    "OpeInterval",
    "SlateIPS",
    "make_estimator",
]


@dataclass(frozen=True)
class OpeInterval:
    """A policy value estimated on the whole log, with its percentile bootstrap interval."""

    estimator: str
    estimate: float
    lower: float
    upper: float
    alpha: float
    n_bootstrap: int
    std: float  # standard deviation of the bootstrap replicates

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Estimator:
    """Shared logic: per-context statistics, a value from their totals, the bootstrap."""

    name: ClassVar[str]
    uses_weights: ClassVar[bool] = True

    def _stats(self, fb: LoggedFeedback) -> np.ndarray:  # n_contexts x k
        raise NotImplementedError

    def _value(self, totals: np.ndarray, n: int) -> float:
        return float(totals[0] / n) if n else float("nan")

    def weights(self, fb: LoggedFeedback) -> np.ndarray:
        """The importance weight of every row (clipped where the estimator clips)."""
        w = self.target_probability(fb) / fb.propensity
        clip = getattr(self, "clip", None)
        if clip is not None:
            if not clip > 0:
                raise ConfigError(f"{self.name}: clip must be a number > 0 or None, got {clip!r}")
            w = np.minimum(w, clip)
        return w

    def target_probability(self, fb: LoggedFeedback) -> np.ndarray:
        return fb.target_probability(self.name)

    def effective_sample_size(self, fb: LoggedFeedback) -> float | None:
        """Kish's effective sample size of the weights this estimator uses (None: no weights)."""
        return effective_sample_size(self.weights(fb)) if self.uses_weights else None

    def estimate_policy_value(self, feedback: LoggedFeedback) -> float:
        """The evaluation policy's expected total reward per context."""
        return self._value(self._stats(feedback).sum(axis=0), feedback.n_contexts or 0)

    def estimate_interval(
        self,
        feedback: LoggedFeedback,
        alpha: float = 0.05,
        n_bootstrap: int = 1000,
        random_state: int | np.random.Generator | None = None,
    ) -> OpeInterval:
        """The estimate and its ``1 - alpha`` percentile bootstrap interval over contexts."""
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be between 0 and 1 (0.05 for 95%), got {alpha!r}")
        if not isinstance(n_bootstrap, int | np.integer) or n_bootstrap < 1:
            raise ConfigError(f"n_bootstrap must be a whole number >= 1, got {n_bootstrap!r}")
        stats = self._stats(feedback)
        n = feedback.n_contexts or 0
        reps = _bootstrap(
            stats, self._value, n, int(n_bootstrap), np.random.default_rng(random_state)
        )
        lower, upper = np.nanquantile(reps, [alpha / 2, 1 - alpha / 2])
        return OpeInterval(
            self.name,
            self._value(stats.sum(axis=0), n),
            float(lower),
            float(upper),
            alpha,
            int(n_bootstrap),
            float(np.nanstd(reps)),
        )


def _bootstrap(
    stats: np.ndarray,
    value: Callable[[np.ndarray, int], float],
    n: int,
    n_bootstrap: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Replicates of ``value`` on ``n`` contexts drawn with replacement.

    Only contexts with a non-zero statistic matter, so a replicate draws how many of its ``n``
    draws land among them (binomial) and spreads those uniformly over them: the same law as
    ``n`` uniform draws, at a cost that grows with the contexts that matter.
    """
    keep = np.flatnonzero(np.any(stats != 0, axis=1))
    s = stats[keep]
    reps = np.empty(n_bootstrap)
    share = len(keep) / n if n else 0.0
    for b in range(n_bootstrap):  # a loop over bootstrap replicates
        hits = rng.binomial(n, share) if len(keep) else 0
        counts = np.bincount(rng.integers(0, len(keep), hits), minlength=len(keep))
        reps[b] = value(counts @ s, n)
    return reps


@dataclass(frozen=True)
class IPS(_Estimator):
    """Inverse propensity scoring: ``sum w r / N`` (weights clipped at ``clip`` if given)."""

    clip: float | None = None
    name: ClassVar[str] = "ips"

    def _stats(self, fb: LoggedFeedback) -> np.ndarray:
        return fb.context_sum(self.weights(fb) * fb.reward)[:, None]


@dataclass(frozen=True)
class SNIPS(_Estimator):
    """Self-normalised IPS: ``sum w r / sum w``, times the positions ``pi_e`` fills per context."""

    clip: float | None = None
    name: ClassVar[str] = "snips"

    def _stats(self, fb: LoggedFeedback) -> np.ndarray:
        w = self.weights(fb)
        return np.column_stack([fb.context_sum(w * fb.reward), fb.context_sum(w), fb.slots()])

    def _value(self, totals: np.ndarray, n: int) -> float:
        if totals[1] <= 0 or not n:
            return float("nan")
        return float(totals[0] / totals[1] * totals[2] / n)


@dataclass(frozen=True)
class DirectMethod(_Estimator):
    """The reward model's expected reward under ``pi_e``, averaged over contexts."""

    name: ClassVar[str] = "dm"
    uses_weights: ClassVar[bool] = False

    def _stats(self, fb: LoggedFeedback) -> np.ndarray:
        return fb.policy_prediction(self.name)[:, None]


@dataclass(frozen=True)
class DoublyRobust(_Estimator):
    """The direct method corrected by the weighted residuals of the logged rewards."""

    clip: float | None = None
    name: ClassVar[str] = "dr"

    def _stats(self, fb: LoggedFeedback) -> np.ndarray:
        base = fb.policy_prediction(self.name)
        residual = fb.reward - fb.logged_prediction(self.name)
        return (base + fb.context_sum(self.weights(fb) * residual))[:, None]


@dataclass(frozen=True)
class SlateIPS(_Estimator):
    """Standard IPS on whole slates: ``sum_x W(x) R(x) / N``, ``W = pi_e(s|x) / p_b(s|x)``."""

    name: ClassVar[str] = "slate_ips"

    def weights(self, fb: LoggedFeedback) -> np.ndarray:
        if fb.slate_propensity is None or fb.slate_pi_e is None:
            missing = [f for f in ("slate_propensity", "slate_pi_e") if getattr(fb, f) is None]
            raise DataError(
                f"{self.name} needs the whole slate's probability under the logging and the "
                f"evaluation policy; missing: {', '.join(missing)}"
            )
        return fb.slate_pi_e / fb.slate_propensity

    def _context_weights(self, fb: LoggedFeedback) -> np.ndarray:
        per_row = self.weights(fb)
        w = np.zeros(fb.n_contexts or 0)
        w[fb.context] = per_row  # constant within a context (checked by LoggedFeedback)
        return w

    def effective_sample_size(self, fb: LoggedFeedback) -> float | None:
        return effective_sample_size(self._context_weights(fb))

    def _stats(self, fb: LoggedFeedback) -> np.ndarray:
        return (self._context_weights(fb) * fb.context_sum(fb.reward))[:, None]


ESTIMATORS: dict[str, type[_Estimator]] = {
    e.name: e for e in (IPS, SNIPS, DirectMethod, DoublyRobust, SlateIPS)
}
"""Estimators by name, as ``nextbest ope --estimator`` names them."""


def make_estimator(name: str, clip: float | None = None) -> _Estimator:
    """The estimator called ``name`` (see :data:`ESTIMATORS`); ``clip`` where it clips weights."""
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {name!r}; expected one of {', '.join(ESTIMATORS)}")
    if clip is not None and name in ("ips", "snips", "dr"):
        return ESTIMATORS[name](clip=clip)  # type: ignore[call-arg]
    return ESTIMATORS[name]()
