"""84.51 "The Complete Journey" (the R package ``completejourney``): give the folder.

- customers ``cj-<household_id>``: every household seen in any table, with the demographics
  (age, income, home ownership, ...) as attributes where known;
- products ``cj-<product_id>``: brand, category = ``product_category``, name =
  ``product_type``; department, manufacturer and package size as attributes;
- offers ``cj-campaign-<id>``: the 27 campaigns (kind discount, channel mail, start and end
  dates, campaign type), each with the number of coupon UPCs and of products its coupons cover
  as attributes (the coupon-to-product table itself is a mapping, not offers);
- decisions: each (campaign, household) receipt, at the campaign's start;
- events: transaction lines as ``purchase`` events in channel store (basket id, store, week and
  the three discounts kept), and coupon redemptions as ``coupon_redemption`` events.

Dates without a time (campaigns, redemptions) are midnight in America/New_York, the time zone
the package's timestamps were built in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from nextbest.data.sources import Batch, ReadOptions
from nextbest.errors import DataError

__all__ = ["read"]

_FILES = (
    "campaign_descriptions.csv",
    "campaigns.csv",
    "coupon_redemptions.csv",
    "coupons.csv",
    "demographics.csv",
    "products.csv.gz",
    "transactions_sample.csv.gz",
)
_ZONE = "America/New_York"


def _csv(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    if not path.exists():
        alt = folder / name.removesuffix(".gz")
        if not alt.exists():
            raise DataError(
                f"{folder}: {name} is missing; expected the Complete Journey files "
                f"{', '.join(_FILES)}"
            )
        path = alt
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def _lines(frame: pd.DataFrame) -> np.ndarray:
    return np.arange(2, len(frame) + 2, dtype=np.int64)


def _midnight(dates: pd.Series) -> pa.Array:
    parsed = pd.to_datetime(dates, format="%Y-%m-%d", errors="coerce")
    local = parsed.dt.tz_localize(_ZONE).dt.tz_convert("UTC")
    return pa.array(local.astype("datetime64[us, UTC]"), pa.timestamp("us", tz="UTC"))


def _batch(table: str, frame: pd.DataFrame, source: Path, lines: np.ndarray) -> Batch:
    data = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    return Batch(table, data, lines, str(source))


def read(path: Path, options: ReadOptions) -> Iterator[Batch]:
    if not path.is_dir():
        raise DataError(f"{path}: expected the Complete Journey folder, not a file")
    desc = _csv(path, "campaign_descriptions.csv")
    campaigns = _csv(path, "campaigns.csv")
    redemptions = _csv(path, "coupon_redemptions.csv")
    coupons = _csv(path, "coupons.csv")
    demographics = _csv(path, "demographics.csv")
    products = _csv(path, "products.csv.gz")
    tx = _csv(path, "transactions_sample.csv.gz")

    households = sorted(
        set(demographics.household_id)
        | set(tx.household_id)
        | set(campaigns.household_id)
        | set(redemptions.household_id),
        key=lambda h: (len(h), h),
    )
    customers = pd.DataFrame({"household_id": households}).merge(
        demographics, on="household_id", how="left"
    )
    customers.insert(0, "customer_id", "cj-" + customers.household_id)
    yield _batch(
        "customers",
        customers.drop(columns="household_id"),
        path / "demographics.csv",
        np.ones(len(customers), np.int64),
    )

    prod = products.rename(columns={"product_category": "category", "product_type": "name"})
    prod.insert(0, "product_id", "cj-" + prod.pop("product_id"))
    yield _batch("products", prod, path / "products.csv.gz", _lines(products))

    per_campaign = coupons.groupby("campaign_id").agg(
        coupons=("coupon_upc", "nunique"), coupon_products=("product_id", "nunique")
    )
    offers = desc.merge(per_campaign, left_on="campaign_id", right_index=True, how="left")
    offer_frame = pd.DataFrame(
        {
            "offer_id": "cj-campaign-" + offers.campaign_id,
            "kind": "discount",
            "name": "Campaign " + offers.campaign_id + " (" + offers.campaign_type + ")",
            "channels": "mail",
            "campaign_type": offers.campaign_type,
            "coupons": offers.coupons.astype("string"),
            "coupon_products": offers.coupon_products.astype("string"),
        }
    )
    offer_data = pa.Table.from_pandas(offer_frame, preserve_index=False)
    offer_data = offer_data.append_column("start_ts", _midnight(offers.start_date))
    offer_data = offer_data.append_column("end_ts", _midnight(offers.end_date))
    yield Batch("offers", offer_data, _lines(desc), str(path / "campaign_descriptions.csv"))

    start = dict(zip(desc.campaign_id, desc.start_date, strict=True))
    dec = pd.DataFrame(
        {
            "decision_id": "cj-campaign-" + campaigns.campaign_id + ":" + campaigns.household_id,
            "customer_id": "cj-" + campaigns.household_id,
            "offer_id": "cj-campaign-" + campaigns.campaign_id,
            "channel": "mail",
            "policy": "84.51",
        }
    )
    dec_data = pa.Table.from_pandas(dec, preserve_index=False).append_column(
        "ts", _midnight(campaigns.campaign_id.map(start))
    )
    yield Batch("decisions", dec_data, _lines(campaigns), str(path / "campaigns.csv"))

    for first in range(0, len(tx), options.batch_rows):
        part = tx.iloc[first : first + options.batch_rows]
        lines = np.arange(first + 2, first + 2 + len(part), dtype=np.int64)
        events = pd.DataFrame(
            {
                "event_id": "cj-tx:" + pd.Series(lines.astype(str), index=part.index),
                "customer_id": "cj-" + part.household_id,
                "ts": part.transaction_timestamp,
                "type": "purchase",
                "product_id": "cj-" + part.product_id,
                "channel": "store",
                "quantity": part.quantity,
                "amount": part.sales_value,
                "basket_id": "cj-" + part.basket_id,
                "store_id": part.store_id,
                "week": part.week,
                "retail_disc": part.retail_disc,
                "coupon_disc": part.coupon_disc,
                "coupon_match_disc": part.coupon_match_disc,
            }
        )
        yield _batch("events", events, path / "transactions_sample.csv.gz", lines)

    lines = _lines(redemptions)
    red = pd.DataFrame(
        {
            "event_id": "cj-redemption:" + pd.Series(lines.astype(str)),
            "customer_id": "cj-" + redemptions.household_id,
            "type": "coupon_redemption",
            "offer_id": "cj-campaign-" + redemptions.campaign_id,
            "channel": "store",
            "coupon_upc": redemptions.coupon_upc,
        }
    )
    red_data = pa.Table.from_pandas(red, preserve_index=False).append_column(
        "ts", _midnight(redemptions.redemption_date)
    )
    yield Batch("events", red_data, lines, str(path / "coupon_redemptions.csv"))
