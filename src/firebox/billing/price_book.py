"""The price book: SPEC §2 prices by version, and the SPEC §3 usage tiers.

The book is data (``price_book.toml`` shipped in the package, or an
operator's file). Prices are versioned by ``effective_from``: a usage record
is priced by the version in force at the record's own time, so appending a
version never reprices usage that happened before it. Everything is held as
integer micro-USD; the file spells USD as decimal strings.
"""

from __future__ import annotations

import bisect
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from firebox.billing.money import parse_usd
from firebox.errors import InvalidArgument

DEFAULT_PATH = Path(__file__).with_name("price_book.toml")


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """One version of the price book, in force from ``effective_from``."""

    id: str
    effective_from: datetime
    cached_prompt_discount_percent: int
    # price class name -> micro-USD per 1M tokens (text, embedding) or per step (image)
    classes: MappingProxyType[str, int]
    # base model's price class name -> micro-USD per 1M training tokens
    fine_tuning: MappingProxyType[str, int]
    # GPU type -> micro-USD per GPU-hour
    gpu_hour: MappingProxyType[str, int]
    # Batch inference: this percent of the serverless per-token price (SPEC §2: 50).
    batch_price_percent: int = 50


@dataclass(frozen=True, slots=True)
class Tier:
    tier: int
    spend_limit_micros: int
    qualifies_at_micros: int


class PriceBook:
    """Price versions ordered by ``effective_from``, plus the tier table."""

    def __init__(self, versions: list[PriceVersion], tiers: list[Tier]) -> None:
        if not versions:
            raise ValueError("a price book needs at least one version")
        if not tiers:
            raise ValueError("a price book needs a tier table")
        self.versions: tuple[PriceVersion, ...] = tuple(
            sorted(versions, key=lambda v: v.effective_from)
        )
        self._starts = [v.effective_from for v in self.versions]
        if len(set(self._starts)) != len(self._starts):
            raise ValueError("two price versions share an effective_from")
        self.tiers: tuple[Tier, ...] = tuple(sorted(tiers, key=lambda t: t.tier))

    @classmethod
    def load(cls, path: Path | None = None) -> PriceBook:
        """Read a price book file (default: the one shipped with Firebox)."""
        with (path or DEFAULT_PATH).open("rb") as handle:
            data = tomllib.load(handle)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriceBook:
        versions = [_version(raw) for raw in data.get("versions", [])]
        tiers = [
            Tier(
                tier=int(raw["tier"]),
                spend_limit_micros=parse_usd(str(raw["spend_limit"]), "spend_limit"),
                qualifies_at_micros=parse_usd(str(raw["qualifies_at"]), "qualifies_at"),
            )
            for raw in data.get("tiers", [])
        ]
        return cls(versions, tiers)

    def version_at(self, when: datetime) -> PriceVersion:
        """The version in force at ``when`` (usage before the first version: the first)."""
        index = bisect.bisect_right(self._starts, when) - 1
        return self.versions[max(index, 0)]

    def tier_limit_micros(self, tier: int) -> int:
        """The monthly spend limit of usage tier ``tier`` (above the top tier: the top's)."""
        for row in reversed(self.tiers):
            if row.tier <= tier:
                return row.spend_limit_micros
        return self.tiers[0].spend_limit_micros

    def tier_for(self, historical_micros: int) -> int:
        """The highest tier that ``historical_micros`` of historical spend qualifies for."""
        best = self.tiers[0].tier
        for row in self.tiers:
            if historical_micros >= row.qualifies_at_micros:
                best = row.tier
        return best


def _prices(raw: dict[str, Any], where: str) -> MappingProxyType[str, int]:
    return MappingProxyType(
        {name: parse_usd(str(value), f"{where}.{name}") for name, value in raw.items()}
    )


def _version(raw: dict[str, Any]) -> PriceVersion:
    version_id = str(raw["id"])
    try:
        start = datetime.fromisoformat(str(raw["effective_from"]).replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidArgument(
            f"Price version {version_id!r}: effective_from must be an RFC 3339 time.",
            code="invalid_price_book",
            param="effective_from",
        ) from exc
    if start.tzinfo is None:
        raise InvalidArgument(
            f"Price version {version_id!r}: effective_from needs a time zone (use Z).",
            code="invalid_price_book",
            param="effective_from",
        )
    percent = int(raw.get("cached_prompt_discount_percent", 50))
    if not 0 <= percent <= 100:
        raise InvalidArgument(
            f"Price version {version_id!r}: cached_prompt_discount_percent must be 0-100.",
            code="invalid_price_book",
            param="cached_prompt_discount_percent",
        )
    batch = int(raw.get("batch_price_percent", 50))
    if not 0 <= batch <= 100:
        raise InvalidArgument(
            f"Price version {version_id!r}: batch_price_percent must be 0-100.",
            code="invalid_price_book",
            param="batch_price_percent",
        )
    return PriceVersion(
        id=version_id,
        effective_from=start.astimezone(UTC),
        cached_prompt_discount_percent=percent,
        classes=_prices(raw.get("classes", {}), "classes"),
        fine_tuning=_prices(raw.get("fine_tuning", {}), "fine_tuning"),
        gpu_hour=_prices(raw.get("gpu_hour", {}), "gpu_hour"),
        batch_price_percent=batch,
    )
