"""Readers for the public datasets: each turns a file or folder into canonical batches.

A reader is ``read(path, options) -> Iterator[Batch]`` (see :mod:`nextbest.data.sources`);
each module's docstring says how its dataset maps onto the canonical tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from nextbest.data.formats import baskets, cdnow, completejourney, hillstrom, obd
from nextbest.data.sources import Batch, ReadOptions

__all__ = ["FORMATS"]

FORMATS: dict[str, Callable[[Path, ReadOptions], Iterator[Batch]]] = {
    "baskets": baskets.read,
    "cdnow": cdnow.read,
    "completejourney": completejourney.read,
    "hillstrom": hillstrom.read,
    "obd": obd.read,
}
