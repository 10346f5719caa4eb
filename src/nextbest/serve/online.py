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
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nextbest.decide.assign import assign
from nextbest.decide.batch import levers, value_parts
from nextbest.decide.campaign import CampaignFile, load_campaign, parse_campaign
from nextbest.decide.contact import CONSENT_CHANNELS, ContactState
from nextbest.decide.day import with_settings
from nextbest.decide.explore import explore, thompson_table
from nextbest.decide.rules import Rule, compile_rule
from nextbest.errors import ConfigError, DataError
from nextbest.serve.schemas import DecideRequest, DecideResponse, RankedOffer
from nextbest.serve.snapshot import Snapshot
from nextbest.serve.store import ContactCounts, DecisionRow, OnlineStore

__all__ = ["OnlineDecider", "ServingCampaign", "UnknownCustomer", "serving_campaigns"]

_SUPPORTED = ("profit", "conversions")
_DEFAULT_CHANNELS = ("web", "app", "store")
_ARM_CACHE = 1_000_000  # customers' arms kept in memory (about 150 MB at the most)
_NAT = np.datetime64("NaT", "us")


def serving_campaigns(root: Path) -> list[CampaignFile]:
    """The campaigns the service decides with: ``WORKSPACE/campaign.toml``, every
    ``WORKSPACE/campaigns/*.toml``, and a 3-offer ``realtime-<channel>`` campaign (profit, no
    experiment) for each of web, app and store that none of them serves."""
    files = [root / "campaign.toml", *sorted((root / "campaigns").glob("*.toml"))]
    specs = [load_campaign(f) for f in files if f.exists()]
    names = [s.campaign.name for s in specs]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"campaigns: the name {twice[0]!r} is used by two campaign files")
    served = {s.campaign.channel for s in specs}
    for ch in _DEFAULT_CHANNELS:
        if ch not in served:
            specs.append(parse_campaign({"campaign": {"name": f"realtime-{ch}", "channel": ch}}))
    return specs


class UnknownCustomer(DataError):
    """The customer is not in the snapshot (unknown, joined since, or erased)."""


@dataclass
class ServingCampaign:
    """A campaign ready to serve: its offers among the snapshot's, with settings and prices."""

    spec: CampaignFile
    index: np.ndarray  # positions of its offers in the snapshot's offers
    offers: pd.DataFrame  # those offers, with the campaign's settings
    lever: np.ndarray
    prices: dict[str, np.ndarray]  # basis -> per offer, the batch's price (0 if not priced)
    weight: float  # the average position weight
    rules: list[tuple[Rule, np.ndarray | None]]  # rule, the offers it covers (None: all)
    thompson: np.ndarray | None = None  # the posterior's table, built once (not per request)

    @property
    def name(self) -> str:
        return self.spec.campaign.name

    @cached_property
    def col(self) -> dict[str, np.ndarray]:
        """The offers' columns as arrays (a request reads them, never the frame)."""
        out = {c: self.offers[c].to_numpy() for c in self.offers.columns}
        for c in ("start_ts", "end_ts"):
            t = pd.to_datetime(self.offers[c], utc=True)
            out[c] = t.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
        out["brand_text"] = self.offers.brand.fillna("").astype(str).to_numpy()
        out["ids"] = self.offers.offer_id.astype(str).to_numpy()
        return out


def _serving_campaign(spec: CampaignFile, snap: Snapshot) -> ServingCampaign:
    c = spec.campaign
    if c.objective not in _SUPPORTED:
        raise ConfigError(
            f"campaign {c.name}: objective {c.objective!r} is not served in real time yet; "
            f"expected one of {', '.join(_SUPPORTED)}"
        )
    frame = snap.offers
    channels = frame.channels.fillna("").astype(str).str.split("|")
    on = np.array([not ch or c.channel in ch for ch in channels]) | frame.channels.isna().to_numpy()
    index = np.flatnonzero(on)
    offers = frame.iloc[index].reset_index(drop=True)
    offers = with_settings(spec, offers)
    index = index[np.isin(frame.offer_id.to_numpy()[index], offers.offer_id.to_numpy())]
    batch = snap.meta["batch"].get(c.name, {"prices": {}, "position_weights": [1.0]})
    prices = {
        basis: np.array([float(got.get(o, 0.0)) for o in offers.offer_id])
        for basis, got in batch["prices"].items()
    }
    weights = batch["position_weights"][: c.slots] or [1.0]
    rules: list[tuple[Rule, np.ndarray | None]] = []
    if c.eligibility:
        rules.append((compile_rule(c.eligibility, where="campaign.eligibility"), None))
    for j, (text, oid) in enumerate(zip(offers.rule, offers.offer_id, strict=True)):
        if isinstance(text, str) and text:
            rules.append((compile_rule(text, where=f"offers.{oid}.eligibility"), np.array([j])))
    x = c.exploration
    table = None
    if x.share > 0 and x.method == "thompson" and len(offers):
        post = (offers.posterior_alpha.to_numpy(), offers.posterior_beta.to_numpy())
        table = thompson_table(*post, 256)
    return ServingCampaign(
        spec, index, offers, levers(spec, offers), prices, float(np.mean(weights)), rules, table
    )


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
        self.campaigns = {s.campaign.name: _serving_campaign(s, snapshot) for s in campaigns}
        names = list(model.features_)
        snap = snapshot
        self._cust_pos = np.array([names.index(c) for c in snap.meta["customer_columns"]], int)
        # per snapshot offer, the pair row with the offer's columns and the history defaults
        template = np.zeros((len(snap.offers), len(names)), dtype=np.float32)
        for f, col in enumerate(snap.meta["offer_columns"]):
            template[:, names.index(col)] = snap.offer_coded[:, f]
        self._hist: list[tuple[str, str, int, float]] = []
        for level, h in snap.history.items():
            for col in h.columns:
                if col in names:
                    default = np.nan if col.endswith("_ctr") else 0.0
                    template[:, names.index(col)] = default
                    self._hist.append((level, col, names.index(col), default))
        if "slot" in names:
            template[:, names.index("slot")] = 1.0
        self._template = template
        products = snap.products
        self._product_brand = dict(zip(products.product_id, products.brand, strict=True))
        self._product_category = dict(zip(products.product_id, products.category, strict=True))

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
        for level, col, pos, default in self._hist:
            h = self.snapshot.history[level]
            lo, hi = np.searchsorted(h.customer, [row, row + 1])
            table = np.full(h.n_values + 1, default, dtype=np.float32)
            table[h.value[lo:hi]] = h.columns[col][lo:hi]
            codes = h.offer_value[index]
            X[:, pos] = table[np.where(codes >= 0, codes, h.n_values)]
        return X

    def _novel(self, row: int, index: np.ndarray) -> np.ndarray:
        h = self.snapshot.history["brand"]
        lo, hi = np.searchsorted(h.customer, [row, row + 1])
        seen = (h.columns["aff_brand"][lo:hi] > 0) | (h.columns["aff_brand_shown"][lo:hi] > 0)
        return ~np.isin(h.offer_value[index], h.value[lo:hi][seen])

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

    def _context(self, req: DecideRequest, at: datetime, cart: list[str], row: int) -> dict:
        ctx = req.context
        brands = {str(self._product_brand.get(p)) for p in cart if self._product_brand.get(p)}
        cats = {str(self._product_category.get(p)) for p in cart if self._product_category.get(p)}
        profile_region = self.snapshot.profile(row).get("region")
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

    def _rule_values(self, camp: ServingCampaign, row: int, X: np.ndarray, ctx: dict) -> dict:
        profile = self.snapshot.profile(row)
        names = list(self.model.features_)
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
                    values[name] = X[:, names.index(name)].astype(np.float64)
        return values

    def _arm(self, camp: ServingCampaign, customer_id: str) -> str | None:
        """The customer's arm of the campaign's experiment (hashing a single id costs a
        millisecond in pandas: kept per customer, as it never changes)."""
        e = camp.spec.campaign.experiment
        if e is None:
            return None
        key = (camp.name, customer_id)
        got = self._arms.get(key)
        if got is None:
            ids = np.array([customer_id], dtype=object)
            got = str(assign(ids, e.name, e.salt, e.weights(), names=True)[0])
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
        cart = list(dict.fromkeys([*req.context.cart, *live["cart"]]))
        ctx = self._context(req, at, cart, row)
        offers = camp.offers
        m = len(offers)
        col = camp.col
        moment = np.datetime64(at.replace(tzinfo=None), "us")
        start, end = col["start_ts"], col["end_ts"]
        eligible = (np.isnat(start) | (start <= moment)) & (np.isnat(end) | (end > moment))
        reasons: list[str] = []
        if not eligible.any():
            reasons.append(f"no offer of campaign {c.name} is open on {c.channel} now")
        online = self.store.offer_units()
        sold = col["sold"].astype(np.float64) + np.array([online.get(o, 0.0) for o in col["ids"]])
        stock = col["stock"].astype(np.float64)
        in_stock = np.isnan(stock) | (stock - sold > 0)
        if (eligible & ~in_stock).any():
            reasons.append(f"{int((eligible & ~in_stock).sum())} offer(s) out of stock")
        eligible &= in_stock
        X = self.matrix(row, camp.index)
        values = self._rule_values(camp, row, X, ctx)
        for rule, cover in camp.rules:
            ok = rule.evaluate(values, m)
            mask = ok if cover is None else np.where(np.isin(np.arange(m), cover), ok, True)
            if (eligible & ~mask).any():
                reasons.append(f"rule {rule.source!r} excluded {int((eligible & ~mask).sum())}")
            eligible &= mask
        p = self.model.predict_proba_matrix(X)[:, 1]
        conversion = col["click_to_purchase"].astype(np.float64)
        p_buy = p if self.snapshot.meta["response"] == "purchase" else p * conversion
        buy, gross, cost, value = value_parts(
            spec=camp.spec,
            offers=offers,
            p_buy=p_buy[None, :],
            position_weight=camp.weight,
            lever=camp.lever,
        )
        buy, gross, cost, value = buy[0], gross[0], cost[0], value[0]
        shadow = np.zeros(m)
        for basis, price in camp.prices.items():
            shadow += price * {"units": buy, "cost": cost}.get(basis, np.ones(m))
        score = value - shadow
        novel = self._novel(row, camp.index)
        arm = self._arm(camp, req.customer_id)
        held_out = arm == "holdout"
        k = min(req.count, c.slots) if req.campaign else req.count
        day = at.replace(hour=0, minute=0, second=0, microsecond=0)

        def choose(counts: ContactCounts) -> list[DecisionRow]:
            state = self._contact(camp, row, req.customer_id, at, live, counts)
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
            ok = eligible & state.offer_allowed(list(col["ids"]))[0]
            if (eligible & ~ok).any():
                reasons.append("offers shown the most times allowed were left out")
            slate = self._slate(camp, ok & (score > 0), score, k)
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
                parts = {
                    "p_response": round(float(p[j]), 6),
                    "p_buy": round(float(buy[j]), 6),
                    "gross": round(float(gross[j]), 6),
                    "cost": round(float(cost[j]), 6),
                    "lever": round(float(camp.lever[j]), 4),
                    "value": round(float(value[j]), 6),
                    "shadow_cost": round(float(shadow[j]), 6),
                    "explored": bool(explored[rank]),
                    "novel": bool(novel[j]),
                }
                rows.append(
                    DecisionRow(
                        decision_id=f"{c.name}:rt:{request_id}:{rank + 1}",
                        ts=at,
                        customer_id=req.customer_id,
                        offer_id=str(col["ids"][j]),
                        channel=c.channel,
                        slot=rank + 1,
                        policy=f"{c.name}/realtime",
                        score=float(score[j]),
                        score_parts=json.dumps(parts),
                        propensity=float(prop[rank]),
                        experiment=c.experiment.name if c.experiment else None,
                        arm=arm,
                        request_id=request_id,
                    )
                )
            return rows

        logged = self.store.decide_atomically(
            req.customer_id,
            c.channel,
            day_start=day,
            week_start=at - timedelta(days=7),
            choose=choose,
        )
        ranked = [self._ranked(camp, r, p, value, shadow) for r in logged if r.offer_id]
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

    def _contact(
        self,
        camp: ServingCampaign,
        row: int,
        customer_id: str,
        at: datetime,
        live: dict[str, Any],
        counts: ContactCounts,
    ) -> ContactState:
        """The customer's contact state now: the snapshot's plus what the store counted."""
        snap, ch = self.snapshot, camp.spec.campaign.channel
        same_day = at.date() == snap.as_of.date()
        consent = {c: snap.consent[c][row : row + 1].copy() for c in CONSENT_CHANNELS}
        unsub = {c: snap.unsubscribed[c][row : row + 1].copy() for c in snap.unsubscribed}
        for c, since in live["unsubscribed"].items():
            if c in unsub and np.isnat(unsub[c][0]):
                unsub[c][0] = since
        today = (int(snap.sent_today[ch][row]) if same_day else 0) + counts.today
        week = int(snap.sent_week[ch][row]) + counts.week
        offer_ids = tuple(camp.col["ids"])
        shown = snap.impressions_of(row)
        impressions = np.array(
            [[shown.get(o, 0) + counts.impressions.get(o, 0) for o in offer_ids]], dtype=np.int32
        )
        return ContactState(
            customer_ids=np.array([customer_id], dtype=object),
            as_of=at,
            policy=camp.spec.campaign.contact,
            consent=consent,
            unsubscribed=unsub,
            sent_today={ch: np.array([today])},
            sent_week={ch: np.array([week])},
            suppressed_until={ch: snap.suppressed[ch][row : row + 1].copy()},
            offer_ids=offer_ids,
            impressions=impressions,
        )

    def _slate(
        self, camp: ServingCampaign, ok: np.ndarray, score: np.ndarray, k: int
    ) -> np.ndarray:
        """The best ``k`` eligible offers by score, at most ``max_per_brand`` per brand."""
        cap = camp.spec.campaign.max_per_brand
        brands = camp.col["brand_text"]
        slate = np.full(k, -1, dtype=np.int64)
        used: dict[str, int] = {}
        filled = 0
        for j in np.flatnonzero(ok)[np.argsort(-score[ok], kind="stable")]:
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
    ) -> RankedOffer:
        j = int(np.flatnonzero(camp.col["ids"] == r.offer_id)[0])
        raw = r.score_parts
        parts = (
            dict(raw) if raw is not None and not isinstance(raw, str) else json.loads(raw or "{}")
        )
        why = (
            f"P({self.snapshot.meta['response']}) {p[j]:.2%}, value {value[j]:.3g}, "
            f"shadow cost {shadow[j]:.3g} at the batch's prices"
        )
        if parts.get("explored"):
            why += "; drawn by exploration"
        if parts.get("novel"):
            why += "; a brand new to the customer"

        def text(col: str) -> str | None:
            v = camp.col[col][j]
            return None if pd.isna(v) else str(v)

        return RankedOffer(
            rank=int(r.slot),
            offer_id=str(r.offer_id),
            name=text("name"),
            brand=text("brand"),
            category=text("category"),
            decision_id=r.decision_id,
            score=round(float(r.score or 0), 6),
            value=round(float(value[j]), 6),
            shadow_cost=round(float(shadow[j]), 6),
            probability=round(float(r.propensity or 0), 6),
            explored=bool(parts.get("explored")),
            explanation=why,
        )
