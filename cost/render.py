"""Output: an aligned text table under a header naming the region, the price date and the inputs
(with where each came from), or the JSON document of issue 7 with money as numbers to the cent."""
from __future__ import annotations

import json
from decimal import Decimal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from common.jsonout import render_json
from cost.estimate import Estimate
from cost.money import money, size_text
from cost.prices import PriceTable
from cost.scenario import Scenario

if TYPE_CHECKING:
    from cost.measure import Measurement


def to_document(table: PriceTable, sc: Scenario, estimates: list[Estimate],
                measured: Measurement | None) -> dict[str, Any]:
    inputs: dict[str, Any] = dict(sc.inputs)
    inputs["sources"] = dict(sc.sources)
    inputs["currency"] = table.currency
    inputs["price_source"] = table.source
    if measured is not None:
        inputs["measurement"] = measurement_document(measured)
    return {
        "region": sc.region,
        "price_date": table.price_date.isoformat(),
        "inputs": inputs,
        "estimates": [{
            "storage_class": e.storage_class,
            "monthly_storage_usd": e.monthly_storage,
            "monthly_requests_usd": e.monthly_requests,
            "monthly_total_usd": e.monthly_total,
            "period_total_usd": e.period_total,
            "notes": [f"retrieval time: {e.retrieval_time}", *e.notes],
        } for e in estimates],
    }


def measurement_document(m: Measurement) -> dict[str, Any]:
    return {
        "locations": m.locations,
        "objects": m.objects, "bytes": m.bytes, "manifests": m.manifests, "manifest_bytes": m.manifest_bytes,
        "rows": m.rows, "compression_ratio": _ratio(m.compression_ratio), "storage_classes": dict(m.classes),
        "manifest_storage_classes": dict(m.manifest_classes),
        "span_days": m.span_days, "stray_objects": m.stray_objects, "stray_bytes": m.stray_bytes,
        "unreadable_manifests": m.unreadable_manifests,
        "tables": [{
            "database": t.database, "schema": t.schema, "table": t.table, "objects": t.objects, "bytes": t.bytes,
            "manifests": t.manifests, "rows": t.rows, "compression_ratio": _ratio(t.compression_ratio),
            "storage_classes": dict(t.classes),
            "first_day": t.first_day.isoformat() if t.first_day else None,
            "last_day": t.last_day.isoformat() if t.last_day else None,
        } for t in m.tables.values()],
    }


def _ratio(r: Decimal | None) -> Decimal | None:
    return None if r is None else r.quantize(Decimal("0.01"))


def dumps(doc: dict[str, Any]) -> str:
    """JSON with every Decimal written as a plain JSON number, exactly as it prints (so money keeps
    its two decimals: 11.50, not 11.5 or "11.50")."""
    decimals: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, Decimal):
            decimals.append(_plain(value))
            return f"\0dec{len(decimals) - 1}\0"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = render_json(mark(doc))
    for i, literal in enumerate(decimals):
        text = text.replace(json.dumps(f"\0dec{i}\0"), literal, 1)
    return text


def _plain(value: Decimal) -> str:
    """Decimal as a JSON number literal: no exponent, trailing zeros of non-money figures dropped."""
    text = f"{value:f}"
    if value.as_tuple().exponent != -2 and "." in text:  # type: ignore[operator]
        text = text.rstrip("0").rstrip(".")
    return text


def render_text(table: PriceTable, sc: Scenario, estimates: list[Estimate], measured: Measurement | None) -> str:
    region = table.region(sc.region)
    lines = [f"S3 cost estimate for {sc.region} ({region.name}), prices of {table.price_date.isoformat()} "
             f"in {table.currency}", ""]
    lines += _inputs_lines(sc)
    if measured is not None:
        lines += ["", *_measurement_lines(measured)]
    lines += ["", *_table_lines(table.currency, estimates, sc.workload.months, sc.storage_class), ""]
    for e in estimates:
        if e.notes:
            lines.append(f"{e.storage_class}:")
            lines += [f"  - {n}" for n in e.notes]
    lines += ["", "Monthly figures are the first month; the period total adds each month's bill, with growth "
              "and Intelligent-Tiering's tier moves. Requests include retrieval. Data transfer out is not included."]
    return "\n".join(lines) + "\n"


def _inputs_lines(sc: Scenario) -> list[str]:
    i, s = sc.inputs, sc.sources
    keep = i["archive_retention_days"]
    rows = [
        ("size", f"{_num(i['size_gb'])} GB", s["size_gb"]),
        ("archive objects", f"{i['objects']:,} of {_num(i['avg_object_mb'])} MB on average", s["objects"]),
        ("manifests", f"{_num(i['manifest_kb'])} KB per archive object, priced as one object and one PUT "
                      "each (an upper bound: the archiver stores them in sets of up to 8)", s["manifest_kb"]),
        ("objects priced", f"{i['stored_objects']:,} (archives, manifests and any other objects)",
         s["stored_objects"]),
        ("growth", f"{_num(i['growth_gb_per_month'])} GB a month", s["growth_gb_per_month"]),
        ("retrieval", f"{_num(i['retrieval_gb_per_month'])} GB a month", s["retrieval_gb_per_month"]),
        ("period", f"{i['months']} months", s["months"]),
        ("archive retention", f"{keep} days" if keep is not None else "kept beyond the period",
         s["archive_retention_days"]),
        ("storage class", i["storage_class"], s["storage_class"]),
    ]
    width = max(len(r[0]) for r in rows)
    return [f"  {name:<{width}}  {value}  [{src}]" for name, value, src in rows]


def _measurement_lines(m: Measurement) -> list[str]:
    lines = [f"Measured in {' and '.join(m.locations)}:"]
    header = ("database", "table", "objects", "size", "rows", "ratio", "classes")
    rows = [header] + [(t.database, t.name, f"{t.objects:,}", size_text(Decimal(t.bytes) / 1024**3),
                        f"{t.rows:,}", _ratio_text(t.compression_ratio),
                        ", ".join(f"{c} {n:,}" for c, n in t.classes.most_common()) or "-")
                       for t in m.tables.values()]
    if len(rows) == 1:
        lines.append("  no archive objects found")
    else:
        lines += _aligned(rows, numeric={2, 3, 4, 5}, indent="  ")
    classes = ", ".join(f"{c} {n:,}" for c, n in m.manifest_classes.most_common())
    lines.append(f"  manifests {m.manifests:,} ({size_text(Decimal(m.manifest_bytes) / 1024**3)}"
                 f"{'; ' + classes if classes else ''}); "
                 f"other objects {m.stray_objects:,} ({size_text(Decimal(m.stray_bytes) / 1024**3)}); "
                 f"unreadable manifests {m.unreadable_manifests:,}; data spans {m.span_days:,} days; "
                 f"compression ratio {_ratio_text(m.compression_ratio)} (row bytes from PostgreSQL / stored bytes)")
    return lines


def _table_lines(currency: str, estimates: list[Estimate], months: int, selected: str) -> list[str]:
    header = ("storage class", "storage/month", "requests/month", "total/month", f"{months}-month total",
              "vs STANDARD", "retrieval")
    mark = len(estimates) > 1  # with --compare, star the class the config (or --storage-class) uses
    rows = [header] + [(e.storage_class + (" *" if mark and e.storage_class == selected else ""), money(e.monthly_storage, currency), money(e.monthly_requests, currency),
                        money(e.monthly_total, currency), money(e.period_total, currency), _saving(e, currency),
                        e.retrieval_time) for e in estimates]
    lines = _aligned(rows, numeric={1, 2, 3, 4, 5})
    if mark and any(e.storage_class == selected for e in estimates):
        lines.append(f"* {selected}: the class in use or asked for")
    return lines


def _saving(e: Estimate, currency: str) -> str:
    if e.saving is None:
        return "-"
    if e.saving == 0:
        return money(e.saving, currency)
    return f"-{money(e.saving, currency)}" if e.saving > 0 else f"+{money(-e.saving, currency)}"


def _aligned(rows: Sequence[Sequence[str]], *, numeric: set[int], indent: str = "") -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [cell.rjust(widths[c]) if c in numeric else cell.ljust(widths[c]) for c, cell in enumerate(r)]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def _num(value: Any) -> str:
    """A figure as people write it: thousands separators, at most three decimals, no trailing zeros."""
    d = Decimal(value)
    places = 3 if d == 0 or abs(d) >= 1 else max(3, 2 - d.adjusted())  # 3 significant digits below 1
    text = f"{d:,.{places}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _ratio_text(r: Decimal | None) -> str:
    return "-" if r is None else f"{r:.1f}x"
