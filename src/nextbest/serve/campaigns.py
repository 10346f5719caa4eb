"""Campaigns as the real-time service serves them: their open offers, settings and prices.

:func:`serving_campaigns` lists the campaign files the service decides with;
:func:`serving_campaign` readies one against a snapshot (:class:`ServingCampaign`: its offers
among the snapshot's with the campaign's settings, levers, the batch's dual prices, compiled
eligibility rules, the Thompson table), with what a request reads precomputed: the offers'
columns as arrays, the value parts as an affine function of P(buy), the experiment's hash key
and arm boundaries (:func:`hash_position`: a customer's place in ``[0, 1)``, as
:func:`nextbest.decide.assign.hash_position` computes it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.decide.assign import arm_bounds
from nextbest.decide.batch import levers, value_parts
from nextbest.decide.campaign import CampaignFile, load_campaign, parse_campaign
from nextbest.decide.day import with_settings
from nextbest.decide.explore import thompson_table
from nextbest.decide.rules import Rule, compile_rule
from nextbest.errors import ConfigError
from nextbest.serve.snapshot import Snapshot

__all__ = ["ServingCampaign", "hash_position", "serving_campaign", "serving_campaigns"]

_SUPPORTED = ("profit", "conversions")
_DEFAULT_CHANNELS = ("web", "app", "store")
_U64 = (1 << 64) - 1

try:  # pandas' SipHash of an object array, before its mixing step (see hash_position)
    from pandas._libs.hashing import hash_object_array as _siphash
except ImportError:  # pragma: no cover - a pandas that moved it: its public function instead
    _siphash = None


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


def hash_position(customer_id: str, hash_key: str) -> float:
    """:func:`nextbest.decide.assign.hash_position` of one id, ``hash_key`` the experiment's
    (the first 16 hex digits of ``md5(f"{salt}:{experiment}")``).

    The same number: pandas' ``hash_array`` is SipHash-2-4 of the UTF-8 id
    (``hash_object_array``) followed by a mix of its 64 bits, done here on a Python int. Through
    ``hash_array`` one id costs a tenth of a millisecond of array set-up; this costs a few
    microseconds. Without pandas' private function, ``hash_array`` itself.
    """
    ids = np.array([customer_id], dtype=object)
    if _siphash is None:
        h = int(pd.util.hash_array(ids, hash_key=hash_key, categorize=False)[0])
    else:
        h = int(_siphash(ids, hash_key, "utf8")[0])
        h ^= h >> 30
        h = (h * 0xBF58476D1CE4E5B9) & _U64
        h ^= h >> 27
        h = (h * 0x94D049BB133111EB) & _U64
        h ^= h >> 31
    return h / 2.0**64  # as numpy's uint64 / 2**64: the int rounded to a float, then divided


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
        for c in ("sold", "stock", "click_to_purchase"):
            out[f"{c}_f8"] = out[c].astype(np.float64)
        return out

    @cached_property
    def offer_ids(self) -> tuple[str, ...]:
        return tuple(self.col["ids"].tolist())

    def value_parts(self, p_buy: np.ndarray) -> tuple[np.ndarray, ...]:
        """:func:`nextbest.decide.batch.value_parts` of one customer: ``(buy, gross, cost,
        value)`` per offer, for ``P(buy)`` per offer."""
        affine = self._affine_value_parts
        if affine is None:
            parts = value_parts(
                spec=self.spec,
                offers=self.offers,
                p_buy=p_buy[None, :],
                position_weight=self.weight,
                lever=self.lever,
            )
            return tuple(part[0] for part in parts)
        return tuple(at0 + slope * p_buy for at0, slope in affine)

    @cached_property
    def _affine_value_parts(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """``value_parts`` at P(buy) 0 and the change per unit of P(buy), when it is affine in
        P(buy) (profit and conversions are; checked at P(buy) 0.3): a request then costs two
        operations per part instead of reading the offers' frame. None when it is not."""
        m = len(self.offers)
        probe = np.array([np.zeros(m), np.ones(m), np.full(m, 0.3)])
        with np.errstate(all="ignore"):
            parts = value_parts(self.spec, self.offers, probe, self.weight, self.lever)
        affine = [(part[0], part[1] - part[0]) for part in parts]
        for (at0, slope), part in zip(affine, parts, strict=True):
            if not np.allclose(at0 + slope * 0.3, part[2], rtol=1e-12, atol=1e-12, equal_nan=True):
                return None
        return affine

    @cached_property
    def texts(self) -> dict[str, list[str | None]]:
        """Name, brand and category of each offer as text (None when missing)."""
        return {
            c: [None if pd.isna(v) else str(v) for v in self.offers[c]]
            for c in ("name", "brand", "category")
        }

    @cached_property
    def arms(self) -> tuple[str, list[float], list[str]] | None:
        """The experiment's hash key, arm boundaries and arm names (None: no experiment);
        :func:`nextbest.decide.assign.assign` for one id, without its per-call set-up."""
        e = self.spec.campaign.experiment
        if e is None:
            return None
        weights = e.weights()
        key = hashlib.md5(f"{e.salt}:{e.name}".encode()).hexdigest()[:16]
        return key, arm_bounds(weights).tolist(), list(weights)


def serving_campaign(spec: CampaignFile, snap: Snapshot) -> ServingCampaign:
    """``spec`` ready to serve from ``snap``: its offers, settings, prices and rules."""
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
