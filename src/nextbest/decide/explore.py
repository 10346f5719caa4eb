"""Exploration with logged propensities: a share of e-mail slots drawn from a stochastic policy.

The optimiser fills each customer's slate (``k`` slots, in order) with offers. :func:`explore`
then turns each filled slot, independently with probability ``share``, into an exploration slot,
so that every eligible offer keeps being tried and any later policy can be evaluated off-line
with inverse propensity scoring (IPS), which needs the probability of every logged decision
under the policy that made it (Li et al. 2011).

Slots are processed in order ``1..k``. In slot ``j`` the candidate set ``S`` is the customer's
eligible offers minus the offers in her other slots at that moment (the final offers of the
slots before ``j``, the optimiser's offers of the slots after it), so a slate never shows an
offer twice. ``S`` holds the exploit offer itself; if ``S`` is empty the slot keeps its exploit
offer and is not explored. An exploration slot draws

- ``epsilon``: uniformly from ``S``;
- ``thompson``: one ``theta_o ~ Beta(alpha_o, beta_o)`` per offer in ``S``, taking the argmax
  (Russo et al. 2018), with the Beta posteriors of :func:`offer_posteriors`;

and, with probability ``novelty_share``, from ``S ∩ novel`` instead (offers new to the
customer), falling back to ``S`` when she has none. An exploration draw can land on the
exploit offer. The propensity logged for the final offer ``o`` of slot ``j`` is::

    (1 - share) * [o == exploit offer of j] + share * q(o)
    q(o) = novelty_share * q(o | S ∩ novel) + (1 - novelty_share) * q(o | S)

(``q(o) = q(o | S)`` when ``S ∩ novel`` is empty), with ``q(o | S) = 1 / |S|`` for epsilon and,
for Thompson, ``P(theta_o = max over S) = ∫ f_o(t) ∏_{i in S, i != o} F_i(t) dt``. It is the
probability that slot ``j`` shows ``o`` given the offers in the other slots at that moment.

The Thompson integral is computed by quadrature on offer ``o``'s own grid: substituting
``u = F_o(t)`` gives ``∫_0^1 ∏_{i != o} F_i(F_o^{-1}(u)) du``, a midpoint rule on ``grid`` points
``u = (g + 1/2) / grid``. The integrand is monotone and bounded by 1, so the error is at most
``1 / (2 grid)`` whatever the posteriors (very peaked ones included, where a shared grid on
``(0, 1)`` would miss the mass), and the ``q`` over ``S`` sum to 1 within it (about 1e-4 in the
tests) without renormalising, which would need ``q`` of every offer in ``S``, ``m`` times the
work. The log-cdfs of every offer on every offer's grid are precomputed (``m x m x grid``);
the log of the product over ``S`` is then one matrix product ``mask @ logF`` per offer and
chunk of customers (50,000 rows), once per distinct candidate set, in float32.

References
----------
Russo, D., Van Roy, B., Kazerouni, A., Osband, I. and Wen, Z. (2018). A Tutorial on Thompson
Sampling. Foundations and Trends in Machine Learning 11(1).
Li, L., Chu, W., Langford, J. and Wang, X. (2011). Unbiased Offline Evaluation of
Contextual-Bandit-Based News Article Recommendation Algorithms. WSDM.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import ibis
import numpy as np
from scipy import special

from nextbest.data.warehouse import Warehouse
from nextbest.errors import ConfigError
from nextbest.features.decision_features import RESPONSES

__all__ = ["METHODS", "Exploration", "explore", "offer_posteriors", "thompson_table"]

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("thompson", "epsilon")
_CHUNK = 50_000
_LOG_FLOOR = -1_000.0  # exp() of it is 0.0 in float64, so clipping log(0) changes nothing
_DEFAULT_RATE = 0.02


@dataclass(frozen=True)
class Exploration:
    """Slates after exploration, per customer (rows) and slot (columns).

    Attributes
    ----------
    slates : n x k int64 offer indices, -1 for an empty slot.
    propensity : n x k float64, the probability under the policy that the slot shows its offer
        given the other slots' offers; 0 for empty slots.
    explored : n x k bool, the slot's offer was drawn by exploration.
    novel : n x k bool, the slot's offer is new to the customer.
    """

    slates: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    novel: np.ndarray


def explore(
    slates: np.ndarray,
    eligible: np.ndarray,
    *,
    share: float,
    method: str = "thompson",
    rng: np.random.Generator,
    posterior: tuple[np.ndarray, np.ndarray] | None = None,
    novel: np.ndarray | None = None,
    novelty_share: float = 0.0,
    grid: int = 256,
    table: np.ndarray | None = None,
) -> Exploration:
    """Replace a share of the optimiser's slots by exploration draws, logging propensities.

    Parameters
    ----------
    slates : n x k int offer indices from the optimiser, -1 for an empty slot (stays empty).
    eligible : n x m bool, the offers each customer may get; every exploit offer is eligible.
    share : probability, independently per filled slot, that it is an exploration slot.
    method : ``"thompson"`` or ``"epsilon"``.
    rng : the random generator (seed it for reproducible slates).
    posterior : Beta ``(alpha, beta)`` per offer (length m); needed for Thompson.
    novel : n x m bool, offers new to the customer; None for none.
    novelty_share : share of exploration draws restricted to the customer's novel candidates.
    grid : quadrature points for the Thompson probabilities.
    table : the posterior's :func:`thompson_table`, when built once for many calls (the
        real-time service); built here otherwise.

    Returns
    -------
    Exploration
        The final slates, their propensities, and which slots were explored and novel.

    One customer (the real-time service's case) takes :func:`_explore_one`, which makes the
    same draws from ``rng`` in the same order and the same arithmetic in Python on one row:
    the same numbers to the last bit, in a tenth of the time the array code takes on 1 x k
    arrays.
    """
    one = _one_customer(slates, eligible, share, method, posterior, novel, novelty_share, grid)
    if one is not None:
        return _explore_one(
            *one, share=share, novelty_share=novelty_share, grid=grid, table=table, rng=rng
        )
    slates, eligible, novel, posterior = _checked(
        slates, eligible, share, method, posterior, novel, novelty_share, grid
    )
    return _explore_rows(
        slates,
        eligible,
        novel,
        posterior,
        share=share,
        novelty_share=novelty_share,
        grid=grid,
        table=table,
        rng=rng,
    )


def _explore_rows(
    slates: np.ndarray,
    eligible: np.ndarray,
    novel: np.ndarray | None,
    posterior: tuple[np.ndarray, np.ndarray] | None,
    *,
    share: float,
    novelty_share: float,
    grid: int,
    table: np.ndarray | None,
    rng: np.random.Generator,
) -> Exploration:
    """:func:`explore` on arguments :func:`_checked` has checked, any number of customers."""
    n, k = slates.shape
    out = slates.copy()
    propensity = np.zeros((n, k))
    explored = np.zeros((n, k), dtype=bool)
    if posterior is not None and share > 0 and table is None:  # Thompson's (None: epsilon)
        table = thompson_table(*posterior, int(grid))
    for start in range(0, n, _CHUNK):  # a loop over chunks of customers
        rows = slice(start, min(n, start + _CHUNK))
        _explore_chunk(
            out[rows],
            propensity[rows],
            explored[rows],
            eligible[rows],
            None if novel is None else novel[rows],
            share=share,
            novelty_share=novelty_share,
            posterior=posterior,
            table=table,
            rng=rng,
        )
    filled = out >= 0
    is_novel = np.zeros((n, k), dtype=bool)
    if novel is not None:
        is_novel = filled & np.take_along_axis(novel, np.where(filled, out, 0), axis=1)
    log.debug("explored %d of %d filled slots", explored.sum(), filled.sum())
    return Exploration(out, propensity, explored, is_novel)


def _explore_chunk(
    slates: np.ndarray,
    propensity: np.ndarray,
    explored: np.ndarray,
    eligible: np.ndarray,
    novel: np.ndarray | None,
    *,
    share: float,
    novelty_share: float,
    posterior: tuple[np.ndarray, np.ndarray] | None,
    table: np.ndarray | None,
    rng: np.random.Generator,
) -> None:
    """Explore one chunk of customers slot by slot, writing into the given views."""
    c, k = slates.shape
    rows = np.arange(c)
    shown = np.zeros(eligible.shape, dtype=bool)  # the offers in each slate right now
    filled = slates >= 0
    shown[np.nonzero(filled)[0], slates[filled]] = True
    for j in range(k):  # slots in order: later slots see the earlier slots' final offers
        exploit = slates[:, j].copy()
        here = rows[exploit >= 0]
        own = exploit[here]
        others = shown.copy()
        others[here, own] = False
        cand = eligible & ~others
        go = np.zeros(c, dtype=bool)
        go[here] = (rng.random(len(here)) < share) & cand[here].any(axis=1)
        cand_new = None if novel is None or novelty_share == 0 else cand & novel
        pool, has_new = cand, np.zeros(c, dtype=bool)
        if cand_new is not None:
            has_new = cand_new.any(axis=1)
            use_new = go & has_new & (rng.random(c) < novelty_share)
            pool = np.where(use_new[:, None], cand_new, cand)
        final = exploit.copy()
        final[go] = _draw(pool[go], posterior, rng)
        shown[here, own] = False
        shown[here, final[here]] = True
        slates[:, j] = final
        explored[:, j] = go
        prop = np.zeros(c)
        prop[here] = 1.0
        if share > 0:
            q = _q(final[here], cand[here], table)
            if cand_new is not None:
                new = has_new[here]
                q_new = _q(final[here][new], cand_new[here][new], table)
                q[new] = novelty_share * q_new + (1 - novelty_share) * q[new]
            prop[here] = (1 - share) * (final[here] == own) + share * q
        propensity[:, j] = prop


def _one_customer(
    slates: np.ndarray,
    eligible: np.ndarray,
    share: float,
    method: str,
    posterior: tuple[np.ndarray, np.ndarray] | None,
    novel: np.ndarray | None,
    novelty_share: float,
    grid: int,
) -> tuple[list[int], int, int | None, int, tuple[np.ndarray, np.ndarray] | None] | None:
    """One customer's slate, her eligible and novel offers as bit masks (bit ``o``: offer
    ``o``), the number of offers and the posterior when drawn from, if the arguments are
    plainly valid (1 x k integers, 1 x m booleans, what :func:`_checked` accepts); None for
    anything else, which :func:`_checked` then refuses with its message or passes to the
    array code."""
    if not (
        isinstance(slates, np.ndarray)
        and isinstance(eligible, np.ndarray)
        and slates.ndim == 2
        and slates.shape[0] == 1
        and slates.dtype.kind in "iu"
        and eligible.dtype == np.bool_
        and eligible.ndim == 2
        and eligible.shape[0] == 1
        and (novel is None or (isinstance(novel, np.ndarray) and novel.dtype == np.bool_))
        and 0.0 <= share <= 1.0
        and 0.0 <= novelty_share <= 1.0
        and method in METHODS
        and int(grid) == grid
        and grid >= 2
    ):
        return None
    m = eligible.shape[1]
    if novel is not None and novel.shape != eligible.shape:
        return None
    ok = _mask(eligible[0])
    slate = slates[0].tolist()
    placed = [o for o in slate if o >= 0]
    if any(o < -1 or o >= m or (o >= 0 and not ok >> o & 1) for o in slate):
        return None
    if len(set(placed)) < len(placed):
        return None
    if method == "thompson":
        if posterior is None:
            return None
        alpha, beta = (np.asarray(p, dtype=np.float64) for p in posterior)
        if alpha.shape != (m,) or beta.shape != (m,):
            return None
        if not ((alpha > 0).all() and (beta > 0).all()):
            return None
        posterior = (alpha, beta)
    else:
        posterior = None
    return slate, ok, None if novel is None else _mask(novel[0]), m, posterior


def _mask(row: np.ndarray) -> int:
    """A boolean row as an int, bit ``o`` set for ``row[o]``."""
    return int.from_bytes(np.packbits(row, bitorder="little").tobytes(), "little")


def _explore_one(
    slate: list[int],
    eligible: int,
    novel: int | None,
    m: int,
    posterior: tuple[np.ndarray, np.ndarray] | None,
    *,
    share: float,
    novelty_share: float,
    grid: int,
    table: np.ndarray | None,
    rng: np.random.Generator,
) -> Exploration:
    """:func:`_explore_rows` of one customer, step by step the same, offer sets as bit
    masks: the same draws from ``rng`` (one uniform per filled slot, one per slot when
    novelty applies, ``m`` keys per explored slot), the same candidate sets and the same
    float arithmetic."""
    k = len(slate)
    if posterior is not None and share > 0 and table is None:
        table = thompson_table(*posterior, int(grid))
    final = list(slate)
    propensity = [0.0] * k
    explored = [False] * k
    shown = 0  # the offers in the slate right now
    for o in slate:
        if o >= 0:
            shown |= 1 << o
    with_new = novel is not None and novelty_share != 0
    for j in range(k):
        own = slate[j]
        others = shown & ~(1 << own) if own >= 0 else shown
        cand = eligible & ~others
        go = own >= 0 and bool(rng.random() < share) and cand != 0
        cand_new = has_new = use_new = 0
        if with_new:
            cand_new = cand & novel  # type: ignore[operator]
            has_new = cand_new != 0
            drawn = rng.random()  # drawn for every row, filled or not, as the array code does
            use_new = go and has_new and bool(drawn < novelty_share)
        offer = own
        if go:
            offer = _draw_one(cand_new if use_new else cand, m, posterior, rng)
        if own >= 0:
            shown = others | 1 << offer
            prop = 1.0
            if share > 0:
                q = _q_one(offer, cand, m, table)
                if with_new and has_new:
                    q_new = _q_one(offer, cand_new, m, table)
                    q = novelty_share * q_new + (1 - novelty_share) * q
                prop = (1 - share) * (offer == own) + share * q
            propensity[j] = prop
        final[j] = offer
        explored[j] = go
    new = novel or 0
    return Exploration(
        np.array([final], dtype=np.int64),
        np.array([propensity], dtype=np.float64),
        np.array([explored], dtype=bool),
        np.array([[o >= 0 and bool(new >> o & 1) for o in final]], dtype=bool),
    )


def _bools(mask: int, m: int) -> np.ndarray:
    """The bit mask of ``m`` offers as a 1 x m boolean row (:func:`_mask` undone)."""
    packed = np.frombuffer(mask.to_bytes((m + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(packed, count=m, bitorder="little").astype(bool)[None, :]


def _draw_one(
    pool: int, m: int, posterior: tuple[np.ndarray, np.ndarray] | None, rng: np.random.Generator
) -> int:
    """:func:`_draw` of one row."""
    return int(_draw(_bools(pool, m), posterior, rng)[0])


def _q_one(offer: int, mask: int, m: int, table: np.ndarray | None) -> float:
    """:func:`_q` of one row."""
    if not mask >> offer & 1:
        return 0.0
    if table is None:
        return 1 / mask.bit_count()
    logs = _bools(mask, m).astype(np.float32) @ table[offer]
    return float(np.exp(logs).mean(axis=1, dtype=np.float64)[0])


def _draw(
    pool: np.ndarray, posterior: tuple[np.ndarray, np.ndarray] | None, rng: np.random.Generator
) -> np.ndarray:
    """One offer per row of the candidate mask: uniform, or the Thompson argmax."""
    if posterior is None:
        keys = rng.random(pool.shape)
    else:
        alpha, beta = posterior
        keys = rng.beta(alpha, beta, size=pool.shape)
    return np.where(pool, keys, -1.0).argmax(axis=1)


def _q(offers: np.ndarray, masks: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    """``q(offer | S)`` per row, ``S`` the row of ``masks``: ``1/|S|`` or the Thompson integral.

    An offer outside its ``S`` gets 0.
    """
    inside = masks[np.arange(len(offers)), offers]
    if table is None:
        return inside / np.maximum(masks.sum(axis=1), 1)
    q = np.zeros(len(offers))
    for o in np.unique(offers[inside]):  # a loop over offers, vectorised over customers
        at = np.nonzero(inside & (offers == o))[0]
        # customers often share a candidate set: integrate once per distinct set
        packed = np.ascontiguousarray(np.packbits(masks[at], axis=1))
        keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        logs = masks[at[first]].astype(np.float32) @ table[o]
        q[at] = np.exp(logs).mean(axis=1, dtype=np.float64)[inverse.ravel()]
    return q


def thompson_table(alpha: np.ndarray, beta: np.ndarray, grid: int) -> np.ndarray:
    """``table[o, i, g] = log F_i(F_o^{-1}(u_g))``, with ``table[o, o] = 0`` (not a rival):
    what Thompson sampling's probabilities are computed from (m x m x grid betainc calls)."""
    u = (np.arange(grid) + 0.5) / grid
    points = special.betaincinv(alpha[:, None], beta[:, None], u[None, :])  # m x grid
    m = len(alpha)
    table = np.empty((m, m, grid), dtype=np.float32)  # float32: 1e-6 relative, 10x faster exp
    with np.errstate(divide="ignore"):
        for o in range(m):  # m x m x grid values, one offer's grid at a time
            cdf = special.betainc(alpha[:, None], beta[:, None], points[o][None, :])
            table[o] = np.maximum(np.log(cdf), _LOG_FLOOR)
    table[np.arange(m), np.arange(m)] = 0.0
    return table


def _checked(
    slates: np.ndarray,
    eligible: np.ndarray,
    share: float,
    method: str,
    posterior: tuple[np.ndarray, np.ndarray] | None,
    novel: np.ndarray | None,
    novelty_share: float,
    grid: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """Validate the arguments of :func:`explore`; return them as arrays of the right types."""
    for name, value in (("share", share), ("novelty_share", novelty_share)):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if int(grid) != grid or grid < 2:
        raise ConfigError(f"grid must be a whole number >= 2, got {grid!r}")
    slates = np.asarray(slates)
    if slates.ndim != 2 or slates.dtype.kind not in "iu":
        raise ConfigError(
            f"slates must be a 2-D integer array (customers x slots), "
            f"got shape {slates.shape} of {slates.dtype}"
        )
    slates = slates.astype(np.int64)
    n = slates.shape[0]
    eligible = np.asarray(eligible, dtype=bool)
    if eligible.ndim != 2 or eligible.shape[0] != n:
        raise ConfigError(
            f"eligible must have shape ({n}, m), one row per slate, got {eligible.shape}"
        )
    m = eligible.shape[1]
    if novel is not None:
        novel = np.asarray(novel, dtype=bool)
        if novel.shape != eligible.shape:
            raise ConfigError(
                f"novel must have shape {eligible.shape} like eligible, got {novel.shape}"
            )
    if posterior is None and method == "thompson":
        raise ConfigError(
            "method 'thompson' needs posterior=(alpha, beta), one Beta per offer: "
            "pass offer_posteriors(...) or use method='epsilon'"
        )
    if posterior is not None and method == "thompson":
        alpha, beta = (np.asarray(p, dtype=np.float64) for p in posterior)
        for name, p in (("alpha", alpha), ("beta", beta)):
            if p.shape != (m,):
                raise ConfigError(f"posterior {name} must have shape ({m},), got {p.shape}")
            if not (p > 0).all():
                raise ConfigError(f"posterior {name} must be > 0 for every offer")
        posterior = (alpha, beta)
    else:
        posterior = None
    bad = np.argwhere((slates < -1) | (slates >= m))
    if len(bad):
        r, s = bad[0]
        raise ConfigError(
            f"slates[{r}, {s}] = {slates[r, s]}: expected an offer index in 0..{m - 1} "
            "or -1 for an empty slot"
        )
    filled = slates >= 0
    ok = np.take_along_axis(eligible, np.where(filled, slates, 0), axis=1) | ~filled
    if not ok.all():
        r, s = np.argwhere(~ok)[0]
        raise ConfigError(
            f"slates[{r}, {s}] = offer {slates[r, s]} is not eligible for customer row {r}: "
            "the optimiser must place only eligible offers"
        )
    ordered = np.sort(slates, axis=1)
    repeats = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeats.any():
        r, s = np.argwhere(repeats)[0]
        raise ConfigError(
            f"slates row {r} shows offer {ordered[r, s + 1]} twice: a slate must not repeat "
            "an offer"
        )
    return slates, eligible, novel, posterior


def offer_posteriors(
    warehouse: Warehouse,
    offer_ids: Sequence[str],
    as_of: datetime,
    *,
    prior_strength: float = 20.0,
    response: str = "click",
) -> tuple[np.ndarray, np.ndarray]:
    """Beta posteriors of each offer's response rate per showing, from the decision log.

    ``shows`` counts the offer's decisions before ``as_of``; ``clicks`` those of them followed,
    before ``as_of``, by a response event (``RESPONSES[response]``) with their ``decision_id``.
    The prior is ``Beta(s * r, s * (1 - r))``, ``s = prior_strength`` and ``r`` the pooled rate
    over all offers before ``as_of`` (0.02 without history; kept within [0.001, 0.999]), so a
    new offer starts at the average with wide uncertainty.

    Returns
    -------
    alpha, beta : float64 arrays in the order of ``offer_ids``:
        ``prior_a + clicks`` and ``prior_b + shows - clicks``.
    """
    if response not in RESPONSES:
        raise ConfigError(f"response must be one of {', '.join(RESPONSES)}, got {response!r}")
    if not prior_strength > 0:
        raise ConfigError(f"prior_strength must be a number > 0, got {prior_strength!r}")
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    cut = ibis.literal(as_of, type="timestamp('UTC')")
    dec = warehouse.table("decisions")
    dec = dec.filter(dec.ts < cut, dec.offer_id.notnull()).select("decision_id", "offer_id")
    ev = warehouse.table("events")
    hits = ev.filter(ev.ts < cut, ev.type.isin(RESPONSES[response]), ev.decision_id.notnull())
    hits = hits.select("decision_id").distinct().mutate(_hit=ibis.literal(1, "int64"))
    shown = dec.left_join(hits, "decision_id").drop("decision_id_right")
    counts = shown.group_by("offer_id").aggregate(
        shows=shown.count(), clicks=shown._hit.fill_null(0).sum()
    )
    frame = counts.to_pandas().set_index("offer_id")
    total_shows, total_clicks = int(frame.shows.sum()), int(frame.clicks.sum())
    rate = total_clicks / total_shows if total_shows else _DEFAULT_RATE
    rate = min(max(rate, 0.001), 0.999)
    frame = frame.reindex(list(offer_ids), fill_value=0)
    shows = frame.shows.to_numpy(dtype=np.float64)
    clicks = frame.clicks.to_numpy(dtype=np.float64)
    prior_a, prior_b = prior_strength * rate, prior_strength * (1 - rate)
    return prior_a + clicks, prior_b + shows - clicks
