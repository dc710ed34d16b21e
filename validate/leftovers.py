"""Work the archiver left unfinished outside the archive itself: batches waiting in the local
fallback directory, and multipart uploads left open under the prefix."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from common.archive import layout
from common.archive.fallback import QUARANTINE, FallbackDir
from common.archive.storage import LocalStorage
from common.archive.table_index import TableListing, load_index
from validate.inventory import Scope
from validate.report import Problem, problem

def pending_fallback(fallback: FallbackDir | None, scope: Scope) -> Iterator[Problem]:
    """One problem per batch in the fallback directory (and per quarantined one)."""
    if fallback is None or not fallback.root.is_dir():
        return
    yield from _batches(fallback, scope, quarantined=False)
    quarantine = fallback.quarantined()
    if quarantine is not None:
        yield from _batches(quarantine, scope, quarantined=True)


def _batches(store: LocalStorage, scope: Scope, *, quarantined: bool) -> Iterator[Problem]:
    """Each data object waiting there (with its rows, where a manifest set there lists it)."""
    listing = TableListing(scope.root)
    for info in store.list(""):
        listing.add(info)
    listing.finish()
    try:
        index = load_index(store, listing, unreadable=[])
        rows = {k: r.manifest.rows for k, r in index.objects.items()}
    except OSError:
        rows = {}
    # A quarantined manifest set whose objects are gone stands for batches too (archiver/sink.py drain).
    waiting = sorted(listing.data) + ([i.key for i in listing.sets] if quarantined else [])
    for key in waiting:
        if not scope.includes(key) and not (quarantined and scope.includes_control(key)):
            continue
        parsed = layout.parse_key(scope.root, key)
        ident = (parsed.database, parsed.schema, parsed.table) if parsed else layout.table_of_control(scope.root, key)
        database = ident[0] if ident else None
        table = f"{ident[1]}.{ident[2]}" if ident else None
        shown = f"{QUARANTINE}/{key}" if quarantined else key
        of = f" of {rows[key]} rows" if key in rows else ""
        if quarantined and layout.in_control(key):
            yield problem("pending_fallback", shown, f"a manifest set was quarantined in {store.root}: it names "
                          "batches whose objects were in neither the fallback directory nor S3 when it was drained, "
                          "or failed their checksum; inspect it before removing anything: its rows may exist nowhere "
                          "else", repair=False, database=database, table=table)
        elif quarantined:
            yield problem("pending_fallback", shown, f"batch{of} was quarantined in "
                          f"{store.root} after failing its checksum; inspect it before removing anything: its rows "
                          "may exist nowhere else", repair=False,
                          database=database, table=table)
        else:
            yield problem("pending_fallback", shown, f"batch{of} is waiting in the "
                          f"fallback directory {store.root}", database=database, table=table)


def incomplete_uploads(client: Any, bucket: str, scope: Scope) -> Iterator[Problem]:
    """Multipart uploads started under the prefix and never completed or aborted."""
    paginator = client.get_paginator("list_multipart_uploads")
    for prefix in scope.prefixes:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                key = upload["Key"]
                parsed = layout.parse_key(scope.root, key)
                started = upload.get("Initiated")
                yield problem(
                    "incomplete_upload", key,
                    f"multipart upload {upload.get('UploadId', '?')} started {started:%Y-%m-%d %H:%M UTC} was never "
                    "completed and its parts are still billed" if started else
                    f"multipart upload {upload.get('UploadId', '?')} was never completed and its parts are still billed",
                    database=parsed.database if parsed else None,
                    table=f"{parsed.schema}.{parsed.table}" if parsed else None)
