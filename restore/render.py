"""What the restore tool prints on stdout: the listing (text or JSON) and the restore summary. Logs
go to stderr, so `--output-format json` output can be piped straight into jq."""
from __future__ import annotations

from datetime import datetime

from common.jsonout import render_json
from common.units import human_bytes
from common.archive.catalog import ArchiveObject
from restore.engine import RestoreReport


def listing_json(objects: list[ArchiveObject]) -> str:
    return render_json([o.to_json() for o in objects])


def listing_text(objects: list[ArchiveObject], *, table: str) -> str:
    if not objects:
        return f"no archived objects for {table}"
    rows = [("START (UTC)", "END (UTC)", "ROWS", "SIZE", "CLASS", "LOCATION", "KEY")]
    for o in objects:
        cls = o.storage_class + (" *" if o.needs_s3_restore else "")
        rows.append((_ts(o.start) or f"{o.day} ?", _ts(o.end) or "?", "?" if o.rows is None else str(o.rows),
                     human_bytes(o.size), cls, o.location, o.key))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(v.rjust(w) if i in (2, 3) else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) + "  " + r[-1]
             for r in rows]
    lines.append(_listing_footer(objects))
    return "\n".join(lines)


def _listing_footer(objects: list[ArchiveObject]) -> str:
    rows = sum(o.rows or 0 for o in objects)
    size = sum(o.size for o in objects)
    fallback = sum(o.location == "fallback" for o in objects)
    frozen = sum(o.needs_s3_restore for o in objects)
    text = f"{len(objects)} objects, {rows} rows, {human_bytes(size)}"
    if fallback:
        text += f"; {fallback} only in the fallback directory (not yet uploaded to S3)"
    if frozen:
        text += (f"; * {frozen} in an archive storage class: an S3 restore request is needed before restoring"
                 " (--request-glacier-restore DAYS)")
    return text


def report_json(report: RestoreReport) -> str:
    return render_json(report.to_json())


def report_text(report: RestoreReport) -> str:
    first, last = report.span()
    span = f"{_ts(first)} .. {_ts(last)}" if first and last else "-"
    if report.dry_run:
        lines = [f"dry run: would restore {len(report.selected)} objects, {report.rows} rows of {report.source} "
                 f"into {report.target} (conflict strategy {report.strategy}), timestamps {span}"]
        lines += [f"  {o.key}  {'?' if o.rows is None else o.rows} rows  {o.location}" for o in report.selected]
    else:
        lines = [f"restore {'completed' if report.objects or not report.selected else 'did nothing'}: "
                 f"{len(report.objects)} objects, {report.rows} rows of {report.source} into {report.target} "
                 f"(conflict strategy {report.strategy}): {report.total('inserted')} inserted, "
                 f"{report.total('skipped')} skipped, {report.total('overwritten')} overwritten, "
                 f"timestamps {span}, {report.seconds:.1f}s"]
        if report.created_target:
            lines.append(f"created {report.target} from the archived schema")
        lines += [f"recreated partition {p}" for p in report.recreated_partitions]
        lines += [f"  {o.key}: {o.rows} rows, {o.inserted} inserted, {o.skipped} skipped, {o.overwritten} overwritten"
                  f" ({o.location}, {o.seconds:.2f}s)" for o in report.objects]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z") if value else None
