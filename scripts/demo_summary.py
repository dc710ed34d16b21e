"""What the demo left in the archive, each kind of object by its own name, and the summary it prints."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from common.archive import layout, manifest_sets, withdrawals
from common.archive.manifest import Manifest
from common.archive.storage import Storage
from common.units import human_bytes


@dataclass(frozen=True)
class ArchiveCounts:
    data_objects: int
    rows: int  # as the manifests record them
    bytes: int  # of the data objects
    manifests: int  # one per data object
    manifest_sets: int  # the control objects holding them (one per group of batches)
    digests: int
    withdrawal_records: int
    other: int  # keys outside the layout


def count_archive(store: Storage, prefix: str) -> ArchiveCounts:
    """Classify every key under `prefix` with the layout's predicates (never by its look), and
    count. Rows come from the manifests, the record every tool trusts."""
    kinds: Counter[str] = Counter()
    size = rows = 0
    for info in store.list(layout.join(prefix, "")):
        if layout.is_manifest_set(info.key):
            kinds["set"] += 1
            for r in manifest_sets.read(store.get(info.key), key=info.key):
                kinds["manifest"] += 1
                rows += r.manifest.rows
        elif layout.is_manifest(info.key):  # a legacy sidecar
            kinds["manifest"] += 1
            rows += Manifest.from_bytes(store.get(info.key), key=info.key).rows
        elif layout.is_control_key(info.key):
            kinds["withdrawal" if withdrawals.is_record(info.key) else
                  "digest" if f"/{layout.DIGESTS}" in info.key or layout.is_legacy_digest(info.key) else "other"] += 1
        elif layout.parse_key(prefix, info.key) is not None:
            kinds["data"] += 1
            size += info.size
        else:
            kinds["other"] += 1
    return ArchiveCounts(data_objects=kinds["data"], rows=rows, bytes=size, manifests=kinds["manifest"],
                         manifest_sets=kinds["set"], digests=kinds["digest"], withdrawal_records=kinds["withdrawal"],
                         other=kinds["other"])


def print_summary(store: Storage, *, prefix: str, where: str, retention_days: int, seeded: int, left: int,
                  expired_left: int, elapsed: float, work: str) -> None:
    """`seeded - left` rows left the table; the archive's own count (its manifests) stands beside it."""
    c = count_archive(store, prefix)
    extra = "".join(f", {n:,} {name}" for n, name in ((c.withdrawal_records, "withdrawal records"),
                                                      (c.other, "other objects (not in the layout)")) if n)
    deleted = seeded - left
    lines = [("rows seeded", f"{seeded:,}"),
             ("rows archived and deleted", f"{deleted:,} in {elapsed:.1f}s ({deleted / max(elapsed, 1e-9):,.0f} rows/s)"),
             ("rows left in the table",
              f"{left:,} (older than {retention_days} days when the run began: {expired_left:,})"),
             ("archive", where),
             ("  data objects (Parquet)", f"{c.data_objects:,} holding {c.rows:,} rows, {human_bytes(c.bytes)}"),
             ("  manifests", f"{c.manifests:,} in {c.manifest_sets:,} manifest sets"),
             ("  run digests", f"{c.digests:,}{extra}"),
             ("config and logs", work)]
    print("\n=== demo summary ===")
    for label, value in lines:
        print(f"{label + ':':<36}{value}")
