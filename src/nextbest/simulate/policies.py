"""Pluggable e-mail policies for the simulator: which open sales go into whose e-mail.

A policy returns, for each member, ``k`` sales in slot order, a score per choice, and the
probability of each choice under the policy (logged as ``propensity`` so that other policies
can be evaluated off-line from the logs):

- ``random``: a uniformly random ordered choice of ``k`` of the ``n`` open sales. The logged
  propensity of a row is the marginal probability that this sale is in this slot, ``1 / n``.
- ``popular``: the same ``k`` sales for everyone, by brand popularity times discount;
  deterministic, so every propensity is 1.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from nextbest.simulate.world import World

__all__ = ["POLICIES", "Policy", "PopularPolicy", "RandomPolicy"]

_CHUNK = 100_000


class Policy(Protocol):
    name: str

    def choose(
        self,
        world: World,
        day: int,
        members: np.ndarray,
        sales: np.ndarray,
        k: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sales (members x k, sale indices), scores and propensities, in slot order."""
        ...


class RandomPolicy:
    name = "random"

    def choose(
        self,
        world: World,
        day: int,
        members: np.ndarray,
        sales: np.ndarray,
        k: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = min(k, len(sales))
        picks = np.empty((len(members), k), dtype=np.int64)
        for start in range(0, len(members), _CHUNK):
            keys = rng.random((min(_CHUNK, len(members) - start), len(sales)))
            top = (
                np.argpartition(keys, k - 1, axis=1)[:, :k]
                if k < len(sales)
                else np.tile(np.arange(len(sales)), (len(keys), 1))
            )
            order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1)
            picks[start : start + len(keys)] = sales[np.take_along_axis(top, order, axis=1)]
        scores = np.zeros(picks.shape)
        return picks, scores, np.full(picks.shape, 1.0 / len(sales))


class PopularPolicy:
    name = "popular"

    def choose(
        self,
        world: World,
        day: int,
        members: np.ndarray,
        sales: np.ndarray,
        k: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        score = world.brand_popularity[world.sale_brand[sales]] * (1 + world.sale_discount[sales])
        best = np.argsort(-score, kind="stable")[:k]
        picks = np.tile(sales[best], (len(members), 1))
        return picks, np.tile(score[best], (len(members), 1)), np.ones(picks.shape)


POLICIES: dict[str, type[RandomPolicy] | type[PopularPolicy]] = {
    "random": RandomPolicy,
    "popular": PopularPolicy,
}
