"""What an advertised capability costs and for whom, as one value from aiModels.json to every
exporter (the listing, BYOC register, Live Runner).

Prices stay exact `Fraction`s all the way; `json_number` is the one place they become JSON
numbers, written the way go-livepeer's JSONRat reads them back (whole numbers as integers).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

OFFER_FIELDS = ("price_per_unit", "pixels_per_unit", "currency", "gateway")
"""aiModels.json's pricing fields, in go-livepeer's order."""


def json_number(value: Fraction) -> int | float:
    return value.numerator if value.denominator == 1 else float(value)


@dataclass(frozen=True)
class Offer:
    """aiModels.json's price fields of one entry; None where the entry leaves one out."""

    price_per_unit: Fraction | None = None
    pixels_per_unit: Fraction | None = None
    currency: str | None = None
    gateway: str | None = None

    @property
    def price_per_pixel(self) -> Fraction | None:
        """`price_per_unit` per `pixels_per_unit` pixels, reduced to one pixel."""
        if self.price_per_unit is None:
            return None
        return Fraction(self.price_per_unit) / (self.pixels_per_unit or 1)

    def aimodels_fields(self) -> dict[str, Any]:
        """The fields as aiModels.json writes them, leaving out those not set."""
        fields: dict[str, Any] = {}
        for key in ("price_per_unit", "pixels_per_unit"):
            value = getattr(self, key)
            if value is not None:
                fields[key] = json_number(value)
        if self.currency is not None:
            fields["currency"] = self.currency
        if self.gateway is not None:
            fields["gateway"] = self.gateway
        return fields
