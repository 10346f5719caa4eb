"""Real-time decisions: one customer, one channel, now, with the batch's rules and prices.

:class:`OnlineDecider` answers ``POST /v1/decide`` with the code of the daily batch, applied to
one customer and the offers open now on the channel:

1. the customer's snapshot row (:mod:`.snapshot`) and what happened since the snapshot, from
   the online store: carts, unsubscribes, purchases of an offer (stock), contacts;
2. eligibility: consent and unsubscribes (hard), the contact policy's caps, suppression and
   quiet hours (:class:`nextbest.decide.contact.ContactState`), the per-offer impression
   limit, stock left, the campaign's and each offer's rule over the customer's 360 columns, the
   offer's columns and the request's context (:mod:`nextbest.decide.rules`);
3. scores: the propensity model on the same coded pair features as the batch, the value of
   :func:`nextbest.decide.batch.value_parts`, less the shadow cost of the resources the offer
   uses at the batch's latest dual prices (``price_units x P(buy) + price_cost x cost +
   price_count``, as :meth:`nextbest.decide.problem.AllocationProblem.shadow_cost`); offers
   whose value does not cover their shadow cost are not shown;
4. the slate: the best ``count`` with at most ``max_per_brand`` per brand, then exploration
   (:func:`nextbest.decide.explore.explore`), seeded by the request id, so every decision logs
   its probability under the policy;
5. the contact check and the decision log in one store transaction
   (:meth:`nextbest.serve.store.OnlineStore.decide_atomically`): caps hold across concurrent
   requests and worker processes.

Rule names from the request: ``channel``, ``hour``, ``weekday``, ``weather``, ``store``,
``device``, ``page``, ``region`` (the request's, else the customer's), ``cart`` (product ids
joined by ``|``: the request's, the snapshot's open cart and the cart events since),
``cart_categories``, ``cart_brands`` and ``cart_count``.

The campaigns are readied for serving in :mod:`.campaigns`, the model is called as
:mod:`.scoring` says, and ``POST /v1/decide`` reaches :meth:`OnlineDecider.decide` through
:mod:`.fastpath` when the request is valid.
"""

from __future__ import annotations

import bisect
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from nextbest.decide.campaign import CampaignFile
from nextbest.decide.contact import CONSENT_CHANNELS, ContactState
from nextbest.decide.explore import explore
from nextbest.errors import ConfigError, DataError
from nextbest.serve.campaigns import (
    ServingCampaign,
    hash_position,
    serving_campaign,
    serving_campaigns,
)
from nextbest.serve.schemas import DecideRequest, DecideResponse, RankedOffer
from nextbest.serve.scoring import compiled_forest, isotonic_clip
from nextbest.serve.snapshot import Snapshot
from nextbest.serve.store import ContactCounts, DecisionRow, OnlineStore

__all__ = ["OnlineDecider", "ServingCampaign", "UnknownCustomer", "serving_campaigns"]

_ARM_CACHE = 1_000_000  # customers' arms kept in memory (about 150 MB at the most)
_NAT = np.datetime64("NaT", "us")


def _score_parts(
    j: int,
    p: np.ndarray,
    buy: np.ndarray,
    gross: np.ndarray,
    cost: np.ndarray,
    lever: np.ndarray,
    value: np.ndarray,
    shadow: np.ndarray,
    explored: bool,
    novel: bool,
) -> dict[str, Any]:
    """What a decision's score is made of, as logged with it."""
    return {
        "p_response": round(float(p[j]), 6),
        "p_buy": round(float(buy[j]), 6),
        "gross": round(float(gross[j]), 6),
        "cost": round(float(cost[j]), 6),
        "lever": round(float(lever[j]), 4),
        "value": round(float(value[j]), 6),
        "shadow_cost": round(float(shadow[j]), 6),
        "explored": explored,
        "novel": novel,
    }


class UnknownCustomer(DataError):
    """The customer is not in the snapshot (unknown, joined since, or erased)."""


class OnlineDecider:
    """Decides for one customer at a time from a snapshot, a model and the online store."""

    def __init__(
        self, snapshot: Snapshot, model: Any, campaigns: list[CampaignFile], store: OnlineStore
    ) -> None:
        self.snapshot = snapshot
        self.model = model
        if hasattr(model, "n_jobs"):  # tens of rows: threads cost more than they give
            model.n_jobs = 1
        self.store = store
        self._arms: dict[tuple[str, str], str] = {}
        self.campaigns = {s.campaign.name: serving_campaign(s, snapshot) for s in campaigns}
        names = list(model.features_)
        snap = snapshot
        self._cust_pos = np.array([names.index(c) for c in snap.meta["customer_columns"]], int)
        # per snapshot offer, the pair row with the offer's columns and the history defaults
        template = np.zeros((len(snap.offers), len(names)), dtype=np.float32)
        for f, col in enumerate(snap.meta["offer_columns"]):
            template[:, names.index(col)] = snap.offer_coded[:, f]
        # per history level: the model's columns it fills, their places and defaults, and per
        # snapshot offer the column of its value in the level's table (the last: no value)
        self._hist: list[tuple[str, list[str], np.ndarray, np.ndarray, np.ndarray]] = []
        for level, h in snap.history.items():
            cols = [col for col in h.columns if col in names]
            if not cols:
                continue
            defaults = np.array([np.nan if c.endswith("_ctr") else 0.0 for c in cols], np.float32)
            places = np.array([names.index(c) for c in cols], dtype=np.int64)
            template[:, places] = defaults
            codes = np.where(h.offer_value >= 0, h.offer_value, h.n_values)
            self._hist.append((level, cols, places, defaults, codes))
        if "slot" in names:
            template[:, names.index("slot")] = 1.0
        self._template = template
        products = snap.products
        self._product_brand = dict(zip(products.product_id, products.brand, strict=True))
        self._product_category = dict(zip(products.product_id, products.category, strict=True))
        self._feature_pos = {name: j for j, name in enumerate(names)}
        self._calibration = isotonic_clip(model)
        self._forest = (
            compiled_forest(model, template[:1]) if self._calibration is not None else None
        )

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """P(response) per row of coded pair features: the model's calibrated probability.

        For a LightGBM booster calibrated by isotonic regression (the propensity model) this
        is the trees' compiled walk (:meth:`nextbest.models.forest.Forest.raw`, LightGBM's
        raw scores to the last bit, on one thread: about half of ``Booster.predict``'s time on
        tens of rows) or else the booster on one thread, then the isotonic step function by
        ``np.interp``, the interpolation scikit-learn does without its input checks (a third
        of a millisecond on tens of rows); any other model goes through
        ``predict_proba_matrix``.
        """
        if self._calibration is None or not len(X):
            return np.asarray(self.model.predict_proba_matrix(X)[:, 1])
        if self._forest is not None:
            raw = self._forest.probability(self._forest.raw(X, threads=False))
        else:
            raw = self.model.booster_.booster_.predict(X, num_threads=1)
        x, y, lo, hi = self._calibration
        return np.clip(np.interp(np.clip(raw, lo, hi), x, y), 0.0, 1.0)

    # -- pieces -------------------------------------------------------------------------------
    def row(self, customer_id: str) -> int:
        row = self.snapshot.row(customer_id)
        if row is None:
            raise UnknownCustomer(
                f"customer {customer_id!r} is not in the snapshot of "
                f"{self.snapshot.as_of:%Y-%m-%d} (unknown, joined since, or erased)"
            )
        return row

    def matrix(self, row: int, index: np.ndarray) -> np.ndarray:
        """The coded pair features of customer ``row`` with snapshot offers ``index``."""
        X = self._template[index]
        X[:, self._cust_pos] = self.snapshot.coded[row]
        for level, cols, places, defaults, codes in self._hist:
            # one table per level: a row per column, a column per value (the last: none)
            h = self.snapshot.history[level]
            lo, hi = self._span(level, row)
            table = np.repeat(defaults[:, None], h.n_values + 1, axis=1)
            if hi > lo:
                table[:, h.value[lo:hi]] = [h.columns[c][lo:hi] for c in cols]
            X[:, places] = table[:, codes[index]].T
        return X

    def _span(self, level: str, row: int) -> tuple[int, int]:
        """Where customer ``row``'s pairs are in the history of ``level`` (sorted by row)."""
        customer = self.snapshot.history[level].customer
        return int(customer.searchsorted(row)), int(customer.searchsorted(row + 1))

    def _novel(self, row: int, index: np.ndarray) -> np.ndarray:
        h = self.snapshot.history["brand"]
        lo, hi = self._span("brand", row)
        seen = (h.columns["aff_brand"][lo:hi] > 0) | (h.columns["aff_brand_shown"][lo:hi] > 0)
        known = np.zeros(h.n_values + 1, dtype=bool)  # the last: an offer without a brand
        known[h.value[lo:hi][seen]] = True
        return ~known[h.offer_value[index]]

    def _live(self, customer_id: str, row: int) -> dict[str, Any]:
        """What happened since the snapshot: the open cart, unsubscribes, consent withdrawn."""
        cart = dict.fromkeys(self.snapshot.cart_of(row))
        unsub: dict[str, np.datetime64] = {}
        for e in self.store.customer_events(customer_id, self.snapshot.as_of):
            if e.type == "add_to_cart" and e.product_id:
                cart[e.product_id] = None
            elif e.type == "purchase" and e.product_id:
                cart.pop(e.product_id, None)
            elif e.type == "unsubscribe":
                ch = e.channel or "email"
                unsub.setdefault(ch, np.datetime64(e.ts.replace(tzinfo=None), "us"))
        return {"cart": list(cart), "unsubscribed": unsub}

    def _context(
        self, req: DecideRequest, at: datetime, cart: list[str], profile: dict[str, Any]
    ) -> dict:
        ctx = req.context
        brands = {str(self._product_brand.get(p)) for p in cart if self._product_brand.get(p)}
        cats = {str(self._product_category.get(p)) for p in cart if self._product_category.get(p)}
        profile_region = profile.get("region")
        return {
            "channel": req.channel,
            "hour": at.hour,
            "weekday": at.weekday(),
            "weather": ctx.weather,
            "store": ctx.store,
            "device": ctx.device,
            "page": ctx.page,
            "region": ctx.region or profile_region,
            "cart": "|".join(cart),
            "cart_categories": "|".join(sorted(cats)),
            "cart_brands": "|".join(sorted(brands)),
            "cart_count": len(cart),
        }

    def _rule_values(
        self, camp: ServingCampaign, profile: dict[str, Any], X: np.ndarray, ctx: dict
    ) -> dict:
        names = self._feature_pos
        values: dict[str, Any] = {}
        for rule, _ in camp.rules:
            for name in rule.names:
                if name in ctx:
                    values[name] = ctx[name]
                elif name in camp.col:
                    values[name] = camp.col[name]
                elif name in profile:
                    values[name] = np.array([profile[name]], dtype=object)
                elif name.startswith("aff_") and name in names:
                    values[name] = X[:, names[name]].astype(np.float64)
        return values

    def _arm(self, camp: ServingCampaign, customer_id: str) -> str | None:
        """The customer's arm of the campaign's experiment (kept per customer: it never
        changes)."""
        if camp.arms is None:
            return None
        key = (camp.name, customer_id)
        got = self._arms.get(key)
        if got is None:
            hash_key, bounds, names = camp.arms
            got = names[bisect.bisect_right(bounds, hash_position(customer_id, hash_key))]
            if len(self._arms) >= _ARM_CACHE:
                self._arms.clear()
            self._arms[key] = got
        return got

    # -- the decision -------------------------------------------------------------------------
    def campaign_for(self, req: DecideRequest) -> ServingCampaign:
        if req.campaign is not None:
            if req.campaign not in self.campaigns:
                raise ConfigError(
                    f"campaign: no serving campaign named {req.campaign!r}; expected one of "
                    f"{', '.join(self.campaigns) or '(none configured)'}"
                )
            camp = self.campaigns[req.campaign]
            if camp.spec.campaign.channel != req.channel:
                raise ConfigError(
                    f"campaign: {req.campaign} serves channel {camp.spec.campaign.channel}, "
                    f"not {req.channel}"
                )
            return camp
        for camp in self.campaigns.values():
            if camp.spec.campaign.channel == req.channel:
                return camp
        raise ConfigError(
            f"channel: no serving campaign for {req.channel!r}; configured channels: "
            f"{', '.join(sorted({c.spec.campaign.channel for c in self.campaigns.values()}))}"
        )

    def decide(self, req: DecideRequest, now: datetime | None = None) -> DecideResponse:
        at = (req.context.time or now or datetime.now(UTC)).astimezone(UTC)
        camp = self.campaign_for(req)
        c = camp.spec.campaign
        row = self.row(req.customer_id)
        request_id = uuid.uuid4().hex
        live = self._live(req.customer_id, row)
        m = len(camp.offers)
        col = camp.col
        moment = np.datetime64(at.replace(tzinfo=None), "us")
        start, end = col["start_ts"], col["end_ts"]
        eligible = (np.isnat(start) | (start <= moment)) & (np.isnat(end) | (end > moment))
        reasons: list[str] = []
        if not eligible.any():
            reasons.append(f"no offer of campaign {c.name} is open on {c.channel} now")
        sold, stock = col["sold_f8"], col["stock_f8"]
        if not np.isnan(stock[eligible]).all():  # what was sold online matters
            online = self.store.offer_units()
            if online:
                sold = sold + np.array([online.get(o, 0.0) for o in camp.offer_ids])
        in_stock = np.isnan(stock) | (stock - sold > 0)
        if (eligible & ~in_stock).any():
            reasons.append(f"{int((eligible & ~in_stock).sum())} offer(s) out of stock")
        eligible &= in_stock
        X = self.matrix(row, camp.index)
        if camp.rules:  # the profile and the context are read by rules only
            cart = list(dict.fromkeys([*req.context.cart, *live["cart"]]))
            profile = self.snapshot.profile(row)
            values = self._rule_values(camp, profile, X, self._context(req, at, cart, profile))
        for rule, cover in camp.rules:
            ok = rule.evaluate(values, m)
            mask = ok if cover is None else np.where(np.isin(np.arange(m), cover), ok, True)
            if (eligible & ~mask).any():
                reasons.append(f"rule {rule.source!r} excluded {int((eligible & ~mask).sum())}")
            eligible &= mask
        # only the offers that may be shown are scored (the others' scores are never read)
        p = np.zeros(m)
        if eligible.any():
            p[eligible] = self.probabilities(X[eligible])
        conversion = col["click_to_purchase_f8"]
        p_buy = p if self.snapshot.meta["response"] == "purchase" else p * conversion
        buy, gross, cost, value = camp.value_parts(p_buy)
        shadow = np.zeros(m)
        for basis, price in camp.prices.items():  # price x (units, cost or 1) per offer
            if basis == "units":
                shadow += price * buy
            elif basis == "cost":
                shadow += price * cost
            else:
                shadow += price  # price x 1, the same numbers
        score = value - shadow
        novel = self._novel(row, camp.index)
        arm = self._arm(camp, req.customer_id)
        held_out = arm == "holdout"
        k = min(req.count, c.slots) if req.campaign else req.count
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)
        # what the contact check needs from the snapshot, read before the store's write lock
        # is taken: inside it only the counts are added (the lock is held by one request at a
        # time, across workers, so its time bounds the service's rate)
        contact = self._contact_parts(camp, row, at, live)
        candidates = eligible & (score > 0)
        order = np.flatnonzero(candidates)[np.argsort(-score[candidates], kind="stable")]

        flags: dict[int, tuple[bool, bool]] = {}  # per offer shown: explored, novel

        def plan(counts: ContactCounts, reasons: list[str]) -> list[DecisionRow]:
            state = self._contact_state(camp, req.customer_id, at, contact, counts)
            reachable = bool(state.allowed(c.channel, at)[0] and state.remaining(c.channel)[0] >= 1)
            if not reachable:
                reasons.extend(
                    state.reasons(0, c.channel, at)
                    or [f"no {c.channel} contact left under the contact policy"]
                )
                return []
            if held_out:
                reasons.append(f"in the holdout of experiment {c.experiment.name}")  # type: ignore[union-attr]
                return [self._control_row(camp, request_id, req, at, arm)]
            ok = eligible & state.offer_allowed(camp.offer_ids)[0]
            if (eligible & ~ok).any():
                reasons.append("offers shown the most times allowed were left out")
            slate = self._slate(camp, order[ok[order]], k)
            prop = np.where(slate >= 0, 1.0, 0.0)
            explored = np.zeros(k, dtype=bool)
            x = c.exploration
            if x.share > 0 and (slate >= 0).any():
                rng = np.random.default_rng(int(request_id[:16], 16))
                post = (col["posterior_alpha"], col["posterior_beta"])
                ex = explore(
                    slate[None, :],
                    ok[None, :],
                    share=x.share,
                    method=x.method,
                    rng=rng,
                    posterior=post,
                    novel=novel[None, :],
                    novelty_share=x.novelty_share,
                    table=camp.thompson,
                )
                slate, prop, explored = ex.slates[0], ex.propensity[0], ex.explored[0]
            if not (slate >= 0).any():
                reasons.append("no eligible offer is worth its cost at the batch's prices")
            rows = []
            for rank, j in enumerate(int(o) for o in slate if o >= 0):
                flags[j] = (bool(explored[rank]), bool(novel[j]))
                rows.append(
                    self._decision_row(
                        camp, req.customer_id, request_id, at, arm, rank, j, float(prop[rank]),
                        _score_parts(j, p, buy, gross, cost, camp.lever, value, shadow, *flags[j]),
                        float(score[j]),
                    )
                )  # fmt: skip
            return rows

        # Planned on the counts read now, outside the store's write lock; inside it, the plan
        # stands if the counts are still those (nearly always), else it is made again on the
        # counts read under the lock. Either way what is recorded was chosen on the counts of
        # the transaction that records it, so caps hold, and the lock is held for a count and
        # an insert, not for the contact rules and the exploration draw.
        week_start = at - timedelta(days=7)
        seen = self.store.contact_counts(
            req.customer_id, c.channel, day_start=day, week_start=week_start
        )
        planned_reasons: list[str] = []
        planned = plan(seen, planned_reasons)

        def choose(counts: ContactCounts) -> list[DecisionRow]:
            if counts == seen:
                reasons.extend(planned_reasons)
                return planned
            return plan(counts, reasons)

        logged = self.store.decide_atomically(
            req.customer_id, c.channel, day_start=day, week_start=week_start, choose=choose
        )
        ranked = [self._ranked(camp, r, p, value, shadow, flags) for r in logged if r.offer_id]
        if len(ranked) < req.count and not reasons:
            reasons.append(f"only {len(ranked)} offer(s) eligible and worth their cost")
        return DecideResponse(
            request_id=request_id,
            customer_id=req.customer_id,
            channel=c.channel,
            campaign=c.name,
            ts=at,
            arm=arm,
            held_out=held_out,
            offers=ranked,
            reasons=list(dict.fromkeys(reasons)),
            snapshot=self.snapshot.name,
        )

    def _decision_row(
        self,
        camp: ServingCampaign,
        customer_id: str,
        request_id: str,
        at: datetime,
        arm: str | None,
        rank: int,
        j: int,
        propensity: float,
        parts: dict[str, Any],
        score: float,
    ) -> DecisionRow:
        c = camp.spec.campaign
        return DecisionRow(
            decision_id=f"{c.name}:rt:{request_id}:{rank + 1}",
            ts=at,
            customer_id=customer_id,
            offer_id=camp.offer_ids[j],
            channel=c.channel,
            slot=rank + 1,
            policy=f"{c.name}/realtime",
            score=score,
            score_parts=json.dumps(parts),
            propensity=propensity,
            experiment=c.experiment.name if c.experiment else None,
            arm=arm,
            request_id=request_id,
        )

    def _contact_parts(
        self, camp: ServingCampaign, row: int, at: datetime, live: dict[str, Any]
    ) -> dict[str, Any]:
        """The snapshot's side of the customer's contact state (see :meth:`_contact_state`)."""
        snap, ch = self.snapshot, camp.spec.campaign.channel
        same_day = at.date() == snap.as_of.date()
        unsub = {c: snap.unsubscribed[c][row : row + 1].copy() for c in snap.unsubscribed}
        for c, since in live["unsubscribed"].items():
            if c in unsub and np.isnat(unsub[c][0]):
                unsub[c][0] = since
        shown = snap.impressions_of(row)
        return {
            "consent": {c: snap.consent[c][row : row + 1].copy() for c in CONSENT_CHANNELS},
            "unsubscribed": unsub,
            "today": int(snap.sent_today[ch][row]) if same_day else 0,
            "week": int(snap.sent_week[ch][row]),
            "suppressed": snap.suppressed[ch][row : row + 1].copy(),
            "shown": [shown.get(o, 0) for o in camp.offer_ids] if shown else None,
        }

    def _contact_state(
        self,
        camp: ServingCampaign,
        customer_id: str,
        at: datetime,
        parts: dict[str, Any],
        counts: ContactCounts,
    ) -> ContactState:
        """The customer's contact state now: the snapshot's plus what the store counted."""
        ch = camp.spec.campaign.channel
        offer_ids = camp.offer_ids
        shown = parts["shown"] or [0] * len(offer_ids)
        if counts.impressions:
            more = counts.impressions
            shown = [s + more.get(o, 0) for s, o in zip(shown, offer_ids, strict=True)]
        return ContactState(
            customer_ids=np.array([customer_id], dtype=object),
            as_of=at,
            policy=camp.spec.campaign.contact,
            consent=parts["consent"],
            unsubscribed=parts["unsubscribed"],
            sent_today={ch: np.array([parts["today"] + counts.today])},
            sent_week={ch: np.array([parts["week"] + counts.week])},
            suppressed_until={ch: parts["suppressed"]},
            offer_ids=offer_ids,
            impressions=np.array([shown], dtype=np.int32),
        )

    def _slate(self, camp: ServingCampaign, order: np.ndarray, k: int) -> np.ndarray:
        """The first ``k`` of ``order`` (eligible offers, best score first), at most
        ``max_per_brand`` per brand."""
        cap = camp.spec.campaign.max_per_brand
        brands = camp.col["brand_text"]
        slate = np.full(k, -1, dtype=np.int64)
        used: dict[str, int] = {}
        filled = 0
        for j in order.tolist():
            if filled == k:
                break
            if cap is not None and used.get(brands[j], 0) >= cap:
                continue
            used[brands[j]] = used.get(brands[j], 0) + 1
            slate[filled] = j
            filled += 1
        return slate

    def _control_row(
        self,
        camp: ServingCampaign,
        request_id: str,
        req: DecideRequest,
        at: datetime,
        arm: str | None,
    ) -> DecisionRow:
        c = camp.spec.campaign
        return DecisionRow(
            decision_id=f"{c.name}:rt:{request_id}:0",
            ts=at,
            customer_id=req.customer_id,
            offer_id=None,
            channel=c.channel,
            slot=0,
            policy=f"{c.name}/holdout",
            score=None,
            score_parts=None,
            propensity=c.experiment.holdout if c.experiment else None,
            experiment=c.experiment.name if c.experiment else None,
            arm=arm,
            request_id=request_id,
        )

    def _ranked(
        self,
        camp: ServingCampaign,
        r: DecisionRow,
        p: np.ndarray,
        value: np.ndarray,
        shadow: np.ndarray,
        flags: dict[int, tuple[bool, bool]],
    ) -> RankedOffer:
        j = camp.offer_ids.index(str(r.offer_id))
        explored, novel = flags[j]
        why = (
            f"P({self.snapshot.meta['response']}) {p[j]:.2%}, value {value[j]:.3g}, "
            f"shadow cost {shadow[j]:.3g} at the batch's prices"
        )
        if explored:
            why += "; drawn by exploration"
        if novel:
            why += "; a brand new to the customer"
        texts = camp.texts
        return RankedOffer(
            rank=int(r.slot),
            offer_id=str(r.offer_id),
            name=texts["name"][j],
            brand=texts["brand"][j],
            category=texts["category"][j],
            decision_id=r.decision_id,
            score=round(float(r.score or 0), 6),
            value=round(float(value[j]), 6),
            shadow_cost=round(float(shadow[j]), 6),
            probability=round(float(r.propensity or 0), 6),
            explored=explored,
            explanation=why,
        )
