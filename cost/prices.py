"""The S3 price table: a YAML data file (cost/prices.yaml, or `--prices FILE`) loaded into exact
Decimal models. A bad file is a configuration error naming the file and the key (exit 2)."""
from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import ConfigError, UsageError

BUILTIN_PRICES = Path(__file__).with_name("prices.yaml")
KB = 1024
GB = 1024**3
#: Population keeps exact sizes only below this (see population.py), so thresholds must stay under it.
MAX_THRESHOLD_KB = 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageTier(_Strict):
    #: Upper bound of the tier in GB-month; None for the last, unbounded tier.
    up_to_gb: Decimal | None = None
    usd_per_gb_month: Decimal = Field(ge=0)


class AccessTier(_Strict):
    """An Intelligent-Tiering tier objects move to after `after_days` without being read."""

    name: str
    after_days: int = Field(gt=0)
    usd_per_gb_month: Decimal = Field(ge=0)


class ClassPrices(_Strict):
    label: str
    storage: list[StorageTier] = Field(min_length=1)
    put_per_1000: Decimal = Field(ge=0)
    #: Lifecycle transition into this class, per 1,000 objects moved.
    transition_per_1000: Decimal = Field(default=Decimal(0), ge=0)
    get_per_1000: Decimal = Field(ge=0)
    retrieval_per_gb: Decimal = Field(default=Decimal(0), ge=0)
    #: Restore (thaw) requests of the Glacier classes, per 1,000.
    restore_per_1000: Decimal = Field(default=Decimal(0), ge=0)
    min_object_kb: int = Field(default=0, ge=0, le=MAX_THRESHOLD_KB)
    overhead_kb: int = Field(default=0, ge=0)
    overhead_standard_kb: int = Field(default=0, ge=0)
    min_storage_days: int = Field(default=0, ge=0)
    access_tiers: list[AccessTier] = Field(default_factory=list)
    monitoring_per_1000: Decimal = Field(default=Decimal(0), ge=0)
    monitoring_min_kb: int = Field(default=0, ge=0, le=MAX_THRESHOLD_KB)
    needs_restore: bool = False
    retrieval_time: str

    @field_validator("storage")
    @classmethod
    def _tiers_ascend(cls, tiers: list[StorageTier]) -> list[StorageTier]:
        bounds = [t.up_to_gb for t in tiers]
        if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
            raise ValueError("only the last storage tier may (and must) omit up_to_gb")
        if any(b is None or b <= 0 for b in bounds[:-1]) or bounds[:-1] != sorted(bounds[:-1]):  # type: ignore[type-var]
            raise ValueError("storage tier bounds must be positive and ascending")
        return tiers

    @field_validator("access_tiers")
    @classmethod
    def _tiers_in_order(cls, tiers: list[AccessTier]) -> list[AccessTier]:
        days = [t.after_days for t in tiers]
        if days != sorted(set(days)):
            raise ValueError("access tiers must have ascending, distinct after_days")
        return tiers

    def storage_cost(self, gb: Decimal) -> Decimal:
        """Monthly storage cost of `gb` GB-month through the tiers (each GB at its tier's rate)."""
        cost, floor = Decimal(0), Decimal(0)
        for tier in self.storage:
            top = gb if tier.up_to_gb is None else min(gb, tier.up_to_gb)
            if top > floor:
                cost += (top - floor) * tier.usd_per_gb_month
            if tier.up_to_gb is None or gb <= tier.up_to_gb:
                break
            floor = tier.up_to_gb
        return cost

    def rate_for_age(self, age_days: int) -> Decimal | None:
        """Intelligent-Tiering: the flat rate of the tier an unread object of this age sits in;
        None while it is still in the (tiered) Frequent Access tier."""
        rate = None
        for tier in self.access_tiers:
            if age_days >= tier.after_days:
                rate = tier.usd_per_gb_month
        return rate


class RegionPrices(_Strict):
    name: str
    classes: dict[str, ClassPrices]

    @model_validator(mode="after")
    def _has_standard(self) -> RegionPrices:
        # STANDARD is the baseline of every comparison and prices the Glacier classes' 8 KB overhead.
        if "STANDARD" not in self.classes:
            raise ValueError("every region needs a STANDARD class")
        return self


class PriceTable(_Strict):
    price_date: date
    currency: str
    source: str
    regions: dict[str, RegionPrices] = Field(min_length=1)
    #: Where the table came from, for messages; not a YAML key.
    origin: str = Field(default="<memory>", exclude=True)

    def region(self, name: str) -> RegionPrices:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(sorted(self.regions))
            raise UsageError(f"no prices for region {name!r} in {self.origin} (known regions: {known})") from None

    def classes(self, region: str) -> dict[str, ClassPrices]:
        return self.region(region).classes

    def class_prices(self, region: str, storage_class: str) -> ClassPrices:
        classes = self.classes(region)
        try:
            return classes[storage_class]
        except KeyError:
            known = ", ".join(classes)
            raise UsageError(f"unknown storage class {storage_class!r} for {region} "
                             f"(known classes: {known})") from None


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The built-in table, or the YAML file at `path` (same layout) instead of it."""
    p = Path(path) if path is not None else BUILTIN_PRICES
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: price table not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read price table: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: price table is not valid YAML{where}") from None
    return parse_prices(data, origin="the built-in price table" if path is None else str(p))


def parse_prices(data: Any, *, origin: str = "<memory>") -> PriceTable:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a price table must be a mapping with price_date, currency, source, regions")
    # Top-level keys starting with "_" only hold YAML anchors shared by several regions.
    data = {k: v for k, v in data.items() if not str(k).startswith("_")}
    try:
        table = PriceTable.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{origin}: {where}: {what}") from None
    return table.model_copy(update={"origin": origin})
