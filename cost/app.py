"""The cost tool's work, callable from tests: validate the command line, load prices (and config),
measure when asked, estimate, print. Every bad input is a UsageError/ConfigError (exit 2)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.cli import Environment
from common.errors import UsageError
from common.exit_codes import ExitCode
from cost.estimate import estimate_all
from cost.expiry import TableExpiry, text_lines
from cost.prices import ClassPrices, load_prices
from cost.render import dumps, render_text, to_document
from cost.scenario import Request, build, pick_region_class

if TYPE_CHECKING:
    from common.config import ObjectLockConfig, Config
    from cost.measure import Measurement

MAX_MONTHS = 1200


@dataclass(frozen=True)
class CostOptions:
    """The command line as typed: numbers stay text until `parse_request` checks them."""

    config_path: Path | None = None
    size_gb: str | None = None
    compare: bool = False
    storage_class: str | None = None
    region: str | None = None
    months: str = "12"
    growth_gb_per_month: str | None = None
    objects: str | None = None
    avg_object_mb: str | None = None
    retrieval_gb_per_month: str | None = None
    archive_retention_days: str | None = None
    prices_path: Path | None = None
    output_format: str = "text"
    verbose: bool = False


def run(opts: CostOptions, *, s3_client: Any | None = None, env: Environment | None = None) -> int:
    req = parse_request(opts)
    table = load_prices(opts.prices_path)
    cfg = _load_config(opts.config_path)
    region, klass = pick_region_class(req, cfg)
    table.region(region)  # unknown region: UsageError listing the known ones, before any listing
    if opts.compare is False or req.storage_class is not None:
        table.class_prices(region, klass)
    measured = _measure(cfg, s3_client) if cfg is not None else None
    sc = build(req, cfg=cfg, measured=measured)
    estimates = estimate_all(table, region, sc.workload, classes=None if opts.compare else [klass])
    sc.put("compare", opts.compare, "given" if opts.compare else "default")
    if cfg is not None and cfg.s3.object_lock is not None:
        for e in estimates:
            e.notes.append(lock_note(cfg.s3.object_lock))
    saved = _expiry(cfg, measured, table.class_prices(region, klass)) if cfg is not None and measured is not None else []
    if opts.output_format == "json":
        doc = to_document(table, sc, estimates, measured)
        if cfg is not None:
            doc["expiry"] = [e.to_json() for e in saved]
        text = dumps(doc)
    else:
        text = render_text(table, sc, estimates, measured)
        text += "".join(line + "\n" for line in text_lines(saved, currency=table.currency, storage_class=klass))
    (env or Environment()).stdout.write(text)
    return int(ExitCode.OK)


def lock_note(lock: ObjectLockConfig) -> str:
    """What s3.object_lock implies for the bill: nothing stored can go before its retention ends."""
    hold = "; the legal hold keeps it until removed" if lock.legal_hold else ""
    return (f"Object Lock {lock.mode} for {lock.retain_days} days: no object, manifest or digest can be deleted "
            f"early, so every one is billed for at least {lock.retain_days} days whatever lifecycle rules or erase "
            f"requests ask{hold}; a batch taken back stays stored and billed"
            + (" (COMPLIANCE: erase cannot rewrite locked objects either)" if lock.mode == "COMPLIANCE" else ""))


def _expiry(cfg: Config, measured: Measurement, prices: ClassPrices) -> list[TableExpiry]:
    from cost.expiry import savings

    return savings(cfg, measured, prices, today=datetime.now(timezone.utc).date())


def _load_config(path: Path | None) -> Config | None:
    if path is None:
        return None
    from common.config import load_config

    return load_config(path)


def _measure(cfg: Config, s3_client: Any | None) -> Measurement:
    from cost.measure import measure  # boto3 and the storage layer: only with --config

    return measure(cfg, s3_client=s3_client)


def parse_request(opts: CostOptions) -> Request:
    avg = _decimal(opts.avg_object_mb, "--avg-object-mb")
    if avg is not None and avg == 0:
        raise UsageError("--avg-object-mb: must be above 0")
    if opts.objects is not None and avg is not None:
        raise UsageError("give --objects or --avg-object-mb, not both")
    months = _integer(opts.months, "--months")
    if months is None or not 1 <= months <= MAX_MONTHS:
        raise UsageError(f"--months: must be between 1 and {MAX_MONTHS} (got {opts.months})")
    return Request(
        size_gb=_decimal(opts.size_gb, "--size-gb"),
        storage_class=opts.storage_class.strip().upper() if opts.storage_class else None,
        region=opts.region.strip() if opts.region else None,
        months=months,
        growth_gb_per_month=_decimal(opts.growth_gb_per_month, "--growth-gb-per-month"),
        objects=_integer(opts.objects, "--objects"),
        avg_object_mb=avg,
        retrieval_gb_per_month=_decimal(opts.retrieval_gb_per_month, "--retrieval-gb-per-month") or Decimal(0),
        archive_retention_days=_integer(opts.archive_retention_days, "--archive-retention-days"),
    )


def _decimal(text: str | None, flag: str) -> Decimal | None:
    """A non-negative, finite number, kept exact."""
    if text is None:
        return None
    try:
        value = Decimal(text.strip().replace("_", ""))
    except InvalidOperation:
        raise UsageError(f"{flag}: {text!r} is not a number") from None
    if not value.is_finite():
        raise UsageError(f"{flag}: {text!r} is not a finite number")
    if value < 0:
        raise UsageError(f"{flag}: must not be negative (got {text})")
    return value + 0  # normalises -0 to 0


def _integer(text: str | None, flag: str) -> int | None:
    value = _decimal(text, flag)
    if value is None:
        return None
    if value != value.to_integral_value():
        raise UsageError(f"{flag}: {text!r} is not a whole number")
    return int(value)


__all__ = ["CostOptions", "parse_request", "run"]
