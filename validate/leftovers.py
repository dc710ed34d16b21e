"""Work the archiver left unfinished outside the archive itself: batches waiting in the local
fallback directory, and multipart uploads left open under the prefix."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from common import layout
from common.errors import DataIntegrityError
from common.manifest import Manifest
from common.fallback import QUARANTINE, FallbackDir
from common.storage import LocalStorage
from validate.inventory import Scope, pair_listing
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
    for entry in pair_listing(store.list(""), head=store.head):
        if not scope.includes(entry.key):
            continue
        parsed = layout.parse_key(scope.root, entry.key)
        database = parsed.database if parsed else None
        table = f"{parsed.schema}.{parsed.table}" if parsed else None
        key = f"{QUARANTINE}/{entry.key}" if quarantined else entry.key
        if quarantined:
            yield problem("pending_fallback", key, f"batch{_rows(store, entry.manifest_key)} was quarantined in "
                          f"{store.root} after failing its checksum; inspect it before removing anything: its rows "
                          "may exist nowhere else", repair=False,
                          database=database, table=table)
        else:
            yield problem("pending_fallback", key, f"batch{_rows(store, entry.manifest_key)} is waiting in the "
                          f"fallback directory {store.root}", database=database, table=table)


def _rows(store: LocalStorage, manifest_key: str) -> str:
    try:
        return f" of {Manifest.from_bytes(store.get(manifest_key), key=manifest_key).rows} rows"
    except (OSError, DataIntegrityError):
        return ""


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
