"""Why a customer got what she got: score parts, exclusions and the constraints that bound.

:func:`explain` rebuilds the customer's inputs for the day through the same path as the batch
(:func:`nextbest.decide.day.day_inputs`), and reads the batch's decisions and its dual prices
(the summary written by ``nextbest decide``). For every open offer it says one of:

- chosen, in slot j, with its parts: probabilities, gross value, cost, lever, value, and the
  shadow cost of the resources it uses (``sum_k price_k * w_k[o] * B_k[c, o]``);
- excluded, with every rule that excluded it: consent, unsubscribe, contact limits,
  suppression and quiet hours in words, the impression limit, the campaign's and the offer's
  eligibility rule (quoted);
- eligible but not chosen: its reduced value (value less shadow cost) against the lowest one
  chosen, and the binding constraints that priced it out, with their shadow prices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nextbest.data.workspace import Workspace
from nextbest.decide.batch import build_problem
from nextbest.decide.campaign import CampaignFile
from nextbest.decide.day import day_inputs
from nextbest.decide.output import decision_id
from nextbest.errors import DataError
from nextbest.models.store import ModelStore

__all__ = ["Binding", "Explanation", "OfferExplanation", "explain"]


@dataclass
class Binding:
    constraint: str
    label: str
    shadow_price: float
    cost_here: float  # what it charges this customer-offer pair


@dataclass
class OfferExplanation:
    offer_id: str
    brand: str
    status: str  # chosen, excluded, not chosen
    slot: int | None
    value: float | None
    shadow_cost: float | None
    reduced_value: float | None
    parts: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    binding: list[Binding] = field(default_factory=list)


@dataclass
class Explanation:
    customer_id: str
    campaign: str
    date: str
    held_out: bool
    offers: list[OfferExplanation]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(ws: Workspace, spec: CampaignFile, day: datetime) -> dict[str, Any]:
    path = ws.root / "decisions" / f"summary-{spec.campaign.name}-{day:%Y-%m-%d}.json"
    if not path.exists():
        raise DataError(
            f"no decisions of campaign {spec.campaign.name} on {day:%Y-%m-%d} ({path} is "
            f"missing); run 'nextbest decide --date {day:%Y-%m-%d}' first"
        )
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def explain(ws: Workspace, spec: CampaignFile, customer_id: str, day: datetime) -> Explanation:
    """Explain ``customer_id``'s decisions of ``spec`` on ``day``."""
    day = datetime(day.year, day.month, day.day, tzinfo=UTC)
    batch = _summary(ws, spec, day)
    inputs = day_inputs(ws.warehouse, ModelStore(ws.models), spec, day, customer_ids=[customer_id])
    inputs.position_weights = list(batch["position_weights"])  # the batch's, not one customer's
    problem, parts = build_problem(spec, inputs)
    offers = list(inputs.offers.offer_id)
    if offers != batch["offer_ids"]:
        raise DataError(
            f"the open offers differ from those of the batch of {day:%Y-%m-%d} (offers were "
            "loaded or changed since); run 'nextbest decide' again for that day"
        )
    dec = ws.warehouse.table("decisions")
    prefix = decision_id(spec, day, customer_id, 0)[:-1]  # every slot of the day
    got = dec.filter(dec.decision_id.startswith(prefix)).to_pandas()
    slot_of = {r.offer_id: int(r.slot) for r in got.itertuples() if isinstance(r.offer_id, str)}
    logged = {
        r.offer_id: json.loads(r.score_parts)
        for r in got.itertuples()
        if isinstance(r.score_parts, str)
    }
    prices = {b: np.asarray(v) for b, v in batch["prices"].items()}
    duals = {c["name"]: c["shadow_price"] for c in batch["constraints"]}
    c = spec.campaign
    contact_reasons = inputs.contact.reasons(0, c.channel, inputs.send_ts)
    if inputs.contact.remaining(c.channel)[0] < 1 and not contact_reasons:
        contact_reasons = [f"no {c.channel} contact left under the contact policy"]
    impressions = inputs.contact.offer_allowed(offers)[0]
    m = len(offers)
    shadows = problem.shadow_cost(prices, np.zeros(m, dtype=np.int64), np.arange(m))
    result = []
    chosen_reduced = []
    rows = []
    for j, oid in enumerate(offers):  # a loop over the day's offers (tens)
        value = float(problem.value[0, j])
        shadow = float(shadows[j])
        binding = []
        for k in problem.couplings:
            price = duals.get(k.name, 0.0)
            if price > 1e-9 and k.weight[j] != 0:
                basis = problem.basis_at(k.basis, np.array([0]), np.array([j]))
                here = price * k.weight[j] * float(basis[0])
                binding.append(Binding(k.name, k.label, price, round(here, 6)))
        reasons = []
        if not problem.eligible[0, j]:
            reasons += contact_reasons
            if not impressions[j]:
                reasons.append(
                    f"shown {oid} the most times allowed ({c.contact.offer_impressions})"
                )
            for text, mask in inputs.rule_masks.items():
                if not mask[0, j]:
                    reasons.append(f"rule: {text}")
        if inputs.holdout[0]:
            reasons.append(
                f"in the holdout of experiment {c.experiment.name if c.experiment else ''}"
            )
        status = "chosen" if oid in slot_of else ("excluded" if reasons else "not chosen")
        part = logged.get(oid) or {
            "p_response": round(float(inputs.p_response[0, j]), 6),
            "p_buy": round(float(parts["p_buy"][0, j]), 6),
            "gross": round(float(parts["gross"][0, j]), 6),
            "cost": round(float(parts["cost"][0, j]), 6),
            "lever": round(float(parts["lever"][0, j]), 4),
        }
        item = OfferExplanation(
            offer_id=oid,
            brand=str(inputs.offers.brand.iloc[j]),
            status=status,
            slot=slot_of.get(oid),
            value=round(value, 6),
            shadow_cost=round(shadow, 6),
            reduced_value=round(value - shadow, 6),
            parts=part,
            reasons=reasons,
            binding=binding,
        )
        if status == "chosen":
            chosen_reduced.append(value - shadow)
        rows.append(item)
    floor = min(chosen_reduced) if chosen_reduced else None
    for item in rows:
        if item.status == "not chosen":
            if floor is not None and item.reduced_value is not None:
                item.reasons.append(
                    f"reduced value {item.reduced_value:.4g} below the lowest chosen "
                    f"{floor:.4g}"
                    + (" (priced out by the binding constraints below)" if item.binding else "")
                )
            elif item.value is not None and item.value <= 0:
                item.reasons.append(f"value {item.value:.4f} is not positive")
            else:
                item.reasons.append("no slot was filled for this customer")
        result.append(item)
    order = {"chosen": 0, "not chosen": 1, "excluded": 2}
    result.sort(key=lambda e: (order[e.status], e.slot or 0, -(e.reduced_value or 0)))
    return Explanation(
        customer_id=customer_id,
        campaign=c.name,
        date=f"{day:%Y-%m-%d}",
        held_out=bool(inputs.holdout[0]),
        offers=result,
    )
