"""Pluggable e-mail policies for the simulator: which open sales go into whose e-mail.

A policy is given the day's eligible members and open sales and returns, for each member,
``k`` sales in slot order, a score per choice, and the probability of each choice under the
policy, logged as ``propensity`` so that other policies can be evaluated off-line:

- ``random``: a uniformly random ordered choice of ``k`` of the ``n`` open sales (all
  ``n! / (n - k)!`` ordered slates equally likely). The logged propensity of a row is the
  marginal probability that this sale is shown in this slot, ``1 / n`` (for ``n = 80`` open
  sales, 0.0125): the probability that item-position IPS estimators need. The probability of
  the whole slate is ``prod_{j=1..k} 1 / (n - j + 1)``, and that of the sale being anywhere in
  the e-mail ``k / n``.
- ``popular``: the same ``k`` sales for everyone, by brand popularity times
  ``(1 + discount)``; deterministic, so every propensity is 1.

When a run holds members out (``SimConfig.holdout_share = h``), the mailed rows' propensities
are multiplied by ``1 - h`` and each control row carries ``h``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from nextbest.simulate.world import World

__all__ = ["POLICIES", "Policy", "PopularPolicy", "RandomPolicy", "Slates"]

_CHUNK = 100_000


class Slates(NamedTuple):
    """Per member (rows) and slot (columns): sale indices, scores and propensities."""

    sales: np.ndarray
    scores: np.ndarray
    propensities: np.ndarray


class Policy(Protocol):
    """Chooses each eligible member's e-mail from the open sales."""

    name: str

    def choose(
        self,
        world: World,
        day: int,
        members: np.ndarray,
        sales: np.ndarray,
        k: int,
        rng: np.random.Generator,
    ) -> Slates:
        """``k`` of ``sales`` (indices) for each of ``members`` (indices), in slot order."""
        ...


class RandomPolicy:
    """A uniformly random ordered choice of ``k`` open sales per member."""

    name = "random"

    def choose(
        self,
        world: World,
        day: int,
        members: np.ndarray,
        sales: np.ndarray,
        k: int,
        rng: np.random.Generator,
    ) -> Slates:
        k = min(k, len(sales))
        picks = np.empty((len(members), k), dtype=np.int64)
        for start in range(0, len(members), _CHUNK):  # a loop over chunks of members
            keys = rng.random((min(_CHUNK, len(members) - start), len(sales)))
            top = (
                np.argpartition(keys, k - 1, axis=1)[:, :k]
                if k < len(sales)
                else np.tile(np.arange(len(sales)), (len(keys), 1))
            )
            order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1)
            picks[start : start + len(keys)] = sales[np.take_along_axis(top, order, axis=1)]
        return Slates(picks, np.zeros(picks.shape), np.full(picks.shape, 1.0 / len(sales)))


class PopularPolicy:
    """The same most popular sales for everyone: brand popularity times ``(1 + discount)``."""

    name = "popular"

    def choose(
        self,
        world: World,
        day: int,
        members: np.ndarray,
        sales: np.ndarray,
        k: int,
        rng: np.random.Generator,
    ) -> Slates:
        score = world.brand_popularity[world.sale_brand[sales]] * (1 + world.sale_discount[sales])
        best = np.argsort(-score, kind="stable")[:k]
        picks = np.tile(sales[best], (len(members), 1))
        return Slates(picks, np.tile(score[best], (len(members), 1)), np.ones(picks.shape))


POLICIES: dict[str, type[RandomPolicy] | type[PopularPolicy]] = {
    "random": RandomPolicy,
    "popular": PopularPolicy,
}
