"""What expiry saves (issue 29), in measured mode (--config): per table, its archive_retention_days
as configured, the archived bytes already past it (by the objects' UTC day partitions and this
host's date; `expire` itself decides by each object's newest row and the database's clock, and
keeps what a legal hold or Object Lock keeps), and what storing those bytes costs a month in the
class priced. With growth, the archive of a table with a retention levels off at about
retention / 30 months of its growth instead of growing for ever."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cost.money import money, size_text
from cost.prices import GB, ClassPrices

if TYPE_CHECKING:
    from common.config import Config
    from cost.measure import Measurement


@dataclass(frozen=True)
class TableExpiry:
    database: str
    table: str
    retention_days: int | None  # None: kept forever
    objects_past: int
    bytes_past: int
    monthly_saving: Decimal

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "table": self.table, "archive_retention_days": self.retention_days,
                "objects_past_retention": self.objects_past, "bytes_past_retention": self.bytes_past,
                "monthly_saving_usd": self.monthly_saving}


def retention_of(cfg: Config, database: str, schema: str, table: str) -> int | None:
    """The table's archive_retention_days (its own, else `defaults:`); None for a table not configured."""
    for db in cfg.databases:
        for t in db.tables if db.name == database else []:
            if (t.schema_, t.name) == (schema, table):
                return cfg.options(t).archive_retention_days
    return None


def savings(cfg: Config, measured: Measurement, prices: ClassPrices, *, today: date) -> list[TableExpiry]:
    rate = prices.storage[0].usd_per_gb_month
    out = []
    for t in measured.tables.values():
        days = retention_of(cfg, t.database, t.schema, t.table)
        # A day partition is past the retention when its last instant is: day + 1 <= today - days.
        past = {d: n for d, n in t.day_bytes.items() if days is not None and d + timedelta(days=1) <= today - timedelta(days=days)}
        nbytes = sum(past.values())
        out.append(TableExpiry(t.database, t.name, days, sum(t.day_objects[d] for d in past), nbytes,
                               (Decimal(nbytes) / GB * rate).quantize(Decimal("0.01"))))
    return out


def text_lines(found: list[TableExpiry], *, currency: str, storage_class: str) -> list[str]:
    if not found:
        return []
    lines = ["", "expiry (archive_retention_days as configured; `pg-archiver-expire` deletes):"]
    for e in found:
        name = f"  {e.database} {e.table}"
        if e.retention_days is None:
            lines.append(f"{name}: no archive_retention_days: kept forever, nothing expires")
        else:
            lines.append(f"{name}: {e.retention_days} days: {size_text(Decimal(e.bytes_past) / GB)} in {e.objects_past} "
                         f"objects past it now; expiring them saves {money(e.monthly_saving, currency)} a month "
                         f"in {storage_class} (legal holds and Object Lock may keep some)")
    return lines
