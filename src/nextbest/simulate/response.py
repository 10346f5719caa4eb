r"""The response model: the ground truth of how members respond to e-mails and sales.

Every probability the environment draws from is computed here, and nowhere else, so the truth
written beside the data is the model that generated it. Notation, for member ``i`` and sale
``s``: ``a`` the taste affinity (:meth:`World.affinity`), ``nu`` the member's novelty taste,
``new`` whether the sale's brand is a new designer, ``d`` the sale's discount, ``rho`` the
member's price sensitivity, ``f`` the number of e-mails the member received in the previous
seven days (fatigue), ``T`` her treatment-effect type.

- **Open.** ``p_open = open_base x exp(-0.06 f)``.
- **Click** on the sale in slot ``k``, given an open:
  ``min(0.5, 0.035 x exp(0.6 a + 1.5 nu new - 0.35 (k - 1) + 1.5 (0.5 + rho)(d - 0.45)))``.
- **Unsubscribe** (per e-mail sent): ``0.001 x (1 + 0.15 f)``, tripled for sleeping dogs.
- **Visits.** Without an e-mail a member visits on her own initiative with probability
  ``activity``. With one, her chance of visiting at all that day becomes
  ``V = min(0.9, activity x lift[T])`` (lift: sure thing 1, persuadable 1.3, sleeping dog 0.6,
  lost cause 1): clicks take the place of own visits, which happen with probability
  ``max(0, V - C) / (1 - C)``, where ``C`` is the chance of at least one click. A sure thing
  who clicks would have come anyway. Each click is a visit to the clicked sale; an own visit
  goes to sale ``s`` with probability ``softmax_s(a + nu new)`` over the open sales.
- **Purchase.** A visit converts with probability
  ``q = sigmoid(-5.35 + 0.7 a + 1.5 (d - 0.45) - 0.8 (rho - 0.5) + tau[T, contacted])``,
  where ``contacted`` means e-mailed that day and ``tau`` is: sure thing +1.6 either way;
  persuadable +1.8 contacted, -0.6 not; sleeping dog -1.0 contacted, +0.5 not; lost cause
  -1.2 either way.
- **Effect of the e-mail** on buying that day (what uplift models should recover):
  ``P(buy | mailed) = 1 - (1 - o E1) (1 - p_open + p_open prod_k (1 - c_k q1_k))`` and
  ``P(buy | not mailed) = activity x E0``, where ``o`` is the own-visit probability when
  mailed, ``c_k`` the click probability of slot ``k`` given an open, ``q1_k`` the conversion
  of the clicked sale, and ``E0``, ``E1`` the expected conversion of an own visit
  (``sum_s softmax_s x q_s``) without and with contact. Purchases beyond a sale's stock become
  waitlist events: the truth counts the intent to buy.
"""

from __future__ import annotations

import numpy as np

from nextbest.simulate.world import EFFECT_TYPES, World

__all__ = [
    "VISIT_LIFT",
    "buy_probability",
    "choice_utility",
    "click_probability",
    "conversion_probability",
    "open_probability",
    "organic_conversion",
    "organic_visit_probability",
    "unsubscribe_probability",
]

SURE, PERSUADABLE, SLEEPING, LOST = range(len(EFFECT_TYPES))
_TAU = np.array(
    [
        [1.6, -0.6, 0.5, -1.2],  # not contacted that day
        [1.6, 1.8, -1.0, -1.2],  # contacted
    ]
)
VISIT_LIFT = np.array([1.0, 1.3, 0.6, 1.0])
"""Multiplier of the chance to visit on a day with an e-mail, per effect type."""
_UNSUB = np.array([1.0, 1.0, 3.0, 1.0])
_CHUNK = 65_536


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def open_probability(world: World, members: np.ndarray, fatigue: np.ndarray) -> np.ndarray:
    """Probability that each member opens today's e-mail, after ``fatigue`` recent e-mails."""
    return world.open_base[members] * np.exp(-0.06 * fatigue)


def click_probability(
    world: World, members: np.ndarray, sales: np.ndarray, slots: np.ndarray
) -> np.ndarray:
    """Probability of a click on the sale in ``slots`` (1 first), given the e-mail was opened."""
    new = world.brand_new[world.sale_brand[sales]]
    x = (
        0.6 * world.pair_affinity(members, sales)
        + 1.5 * world.novelty[members] * new
        - 0.35 * (slots - 1)
        + 1.5 * (0.5 + world.price_sensitivity[members]) * (world.sale_discount[sales] - 0.45)
    )
    return np.minimum(0.5, 0.035 * np.exp(x))


def unsubscribe_probability(world: World, members: np.ndarray, fatigue: np.ndarray) -> np.ndarray:
    """Probability that a member unsubscribes on receiving an e-mail."""
    return 0.001 * (1 + 0.15 * fatigue) * _UNSUB[world.effect_type[members]]


def organic_visit_probability(
    world: World, members: np.ndarray, mailed: np.ndarray, click_any: np.ndarray
) -> np.ndarray:
    """Probability of an own-initiative visit; ``click_any``: chance of a click (0 unmailed)."""
    base = world.activity[members]
    target = np.minimum(0.9, base * VISIT_LIFT[world.effect_type[members]])
    own = np.clip((target - click_any) / np.maximum(1e-12, 1 - click_any), 0.0, 1.0)
    return np.where(mailed, own, base)


def choice_utility(
    world: World, members: np.ndarray, sales: np.ndarray, aff: np.ndarray | None = None
) -> np.ndarray:
    """Utility of each open sale (columns) for an own visit of each member (rows).

    ``aff`` is :meth:`World.affinity` of the same members and sales, if already computed.
    """
    new = world.brand_new[world.sale_brand[sales]]
    aff = world.affinity(members, sales) if aff is None else aff
    return aff + world.novelty[members][:, None] * new[None, :]


def _sale_term(world: World, sales: np.ndarray) -> np.ndarray:
    return -5.35 + 1.5 * (world.sale_discount[sales] - 0.45)


def _member_term(world: World, members: np.ndarray) -> np.ndarray:
    return -0.8 * (world.price_sensitivity[members] - 0.5)


def conversion_probability(
    world: World, members: np.ndarray, sales: np.ndarray, contacted: np.ndarray
) -> np.ndarray:
    """Probability that a visit of each member to the sale beside it ends in a purchase."""
    logit = (
        _sale_term(world, sales)
        + _member_term(world, members)
        + 0.7 * world.pair_affinity(members, sales)
        + _TAU[contacted.astype(np.int64), world.effect_type[members]]
    )
    return _sigmoid(logit)


def organic_conversion(
    world: World, members: np.ndarray, sales: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Expected conversion of an own visit over the open ``sales``: without and with contact.

    Computed in chunks of members, so memory stays at a few chunks of ``len(sales)`` columns;
    the contacted value is recomputed only for the types whose conversion depends on contact.
    """
    alone = np.empty(len(members))
    contacted = np.empty(len(members))
    sale_term = _sale_term(world, sales)[None, :]
    for start in range(0, len(members), _CHUNK):  # a loop over chunks of members
        m = members[start : start + _CHUNK]
        aff = world.affinity(m, sales)
        utility = choice_utility(world, m, sales, aff)
        utility -= utility.max(axis=1, keepdims=True)
        weight = np.exp(utility)
        weight /= weight.sum(axis=1, keepdims=True)
        kind = world.effect_type[m]
        logit = sale_term + _member_term(world, m)[:, None] + 0.7 * aff
        e0 = np.einsum("ij,ij->i", weight, _sigmoid(logit + _TAU[0, kind][:, None]))
        e1 = e0.copy()
        moved = np.flatnonzero(_TAU[0, kind] != _TAU[1, kind])
        e1[moved] = np.einsum(
            "ij,ij->i",
            weight[moved],
            _sigmoid(logit[moved] + _TAU[1, kind[moved]][:, None]),
        )
        alone[start : start + len(m)] = e0
        contacted[start : start + len(m)] = e1
    return alone, contacted


def buy_probability(
    p_open: np.ndarray,
    no_buy_after_clicks: np.ndarray,
    own_visit: np.ndarray,
    own_conversion: np.ndarray,
) -> np.ndarray:
    """Probability of at least one purchase in a day (see the module docstring).

    ``no_buy_after_clicks`` is, given an open, the probability that no click leads to a
    purchase (``prod_k (1 - c_k q1_k)``; 1 without an e-mail, with ``p_open`` 0).
    """
    return 1 - (1 - own_visit * own_conversion) * (1 - p_open + p_open * no_buy_after_clicks)
