"""The validation run: stream the listing, check objects in a bounded thread pool (downloads, hashing
and the database look-ups overlap), then compare overlapping key ranges and look for leftovers.
Read-only throughout: nothing is uploaded, deleted or repaired."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import Any, TypeVar

import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError

from common import batch_writer, iceberg
from common.archive import layout
from common.config import Config
from common.errors import ConfigError, S3Unavailable, first_line
from common.archive.s3client import fallback_storage, primary_storage
from common.archive.manifest import replaced
from common.archive.storage import S3Storage, Storage
from common.archive.table_index import TableListing, load_index
from validate.children import orphaned
from validate.dbcheck import LiveRows
from validate.erasures import Supersessions
from common.archive.digest import secret as digest_secret
from validate.digests import DigestAudit
from validate.inventory import Entry, Scope, TableId, build_scope, tables
from validate.leftovers import incomplete_uploads, pending_fallback
from validate.objects import Checked, ObjectChecker, is_not_found
from validate.keys import key_array
from validate.overlap import OverlapFinder, Span, shared_keys
from validate.report import Report, problem

log = logging.getLogger("validate")
DEFAULT_PARALLEL = 4
T = TypeVar("T")
R = TypeVar("R")


def validate(cfg: Config, *, database: str | None = None, table: str | None = None, quick: bool = False,
             since: datetime | None = None, s3_client: Any | None = None, parallel: int = DEFAULT_PARALLEL,
             on_object: Callable[[Checked], None] | None = None) -> Report:
    """Check the archives in scope and return what was found. Raises ConfigError/UsageError for bad
    filters (exit 2) and ServiceUnavailable when S3 or a database cannot be reached (exit 3)."""
    started = time.monotonic()
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)  # dates on the command line are UTC
    scope = build_scope(cfg, database=database, table=table)
    iceberg.require(cfg)
    store = primary_storage(cfg, s3_client)
    report = Report()
    try:
        _run(cfg, store, scope, report, quick=quick, since=since, parallel=max(parallel, 1), on_object=on_object)
    except ClientError as exc:
        raise _s3_refused(exc, cfg.s3.bucket) from None
    except BotoCoreError as exc:
        raise S3Unavailable(f"S3 unreachable: {first_line(exc)}") from None
    report.summary.seconds = time.monotonic() - started
    report.sort()
    return report


def _run(cfg: Config, store: Storage, scope: Scope, report: Report, *, quick: bool, since: datetime | None,
         parallel: int, on_object: Callable[[Checked], None] | None) -> None:
    with ExitStack() as stack:
        live = None
        if quick:
            report.notes.append("--quick: nothing was downloaded, so row counts, partitions, shared keys and the "
                                "database cross-check were not checked; run without --quick for those")
        else:
            live = stack.enter_context(LiveRows(cfg, scope.tables, size=parallel))
            report.notes.extend(live.notes)
        checker = ObjectChecker(store, root=scope.root, quick=quick, live=live, lock=cfg.s3.object_lock)
        audit = DigestAudit(store, root=scope.root, key_secret=digest_secret(cfg), fallback=fallback_storage(cfg))
        tally = _Tables(store, scope, report, audit, cfg)
        finder = OverlapFinder()
        supersessions = Supersessions()
        size_only = archived = 0
        children: list[Checked] = []  # child objects (issue 28), for orphaned_child
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="validate"))
        for checked in bounded_map(pool, checker.check, tally.entries(since), window=parallel * 2):
            _tally(report, checked)
            size_only += checked.size_only
            archived += checked.in_archive_class
            finder.add(checked)
            supersessions.add(checked)
            if checked.references:
                children.append(checked)
            audit.checked(checked)
            if on_object is not None:
                on_object(checked)
        superseded = supersessions.finish(report)
        finder.discard(superseded)
        audit.finish(report, complete=since is None, superseded=superseded)
        for note in (tally.note(), tally.expiring_note()):
            if note is not None:
                report.notes.append(note)
        if size_only:
            report.notes.append(f"{size_only} objects have no checksum stored with them; --quick compared only their sizes")
        if archived:
            report.notes.append(f"{archived} objects are in GLACIER/DEEP_ARCHIVE: checked by manifest, size and stored "
                                "checksum only; restore them in S3 (restore.main --request-glacier-restore) for a full check")
        if quick:
            report.problems.extend(finder.identical())
        else:
            for group in finder.groups():
                report.problems.extend(shared_keys(group, _KeyFetcher(store, pool).prefetch(group)))
        report.notes.extend(finder.notes)
        for c, what in orphaned(children, store, scope.root, live.pools if live is not None else {}):
            report.problems.append(problem("orphaned_child", c.key, what, database=c.database, table=c.table))
        report.problems.extend(pending_fallback(fallback_storage(cfg), scope))
        if isinstance(store, S3Storage):
            report.problems.extend(incomplete_uploads(store.client, store.bucket, scope))
    for note in report.notes:
        log.info("note: %s", note)


class _Tables:
    """The archive read one table at a time (validate/inventory.py): what each table's listing and
    manifests say, turned into the entries to check, and the findings about the table as a whole."""

    def __init__(self, store: Storage, scope: Scope, report: Report, audit: DigestAudit, cfg: Config) -> None:
        self.store, self.scope, self.report, self.audit, self.cfg = store, scope, report, audit, cfg
        self.withdrawn = 0  # batches taken back, not checked
        self.legacy = 0  # tables with keys of the legacy layout
        self.expiring = 0  # objects an expiry record names, not yet deleted (issue 29)

    def entries(self, since: datetime | None) -> Iterator[Entry]:
        for ident, listing in tables(self.store, self.scope):
            if ident is None:
                yield from (Entry(i.key, i, None) for i in listing.strays)
                continue
            for entry in self._table(ident, listing):
                self.audit.entry(entry)
                if entry.since(since):
                    yield entry

    def _table(self, ident: TableId, listing: TableListing) -> Iterator[Entry]:
        unreadable: list[tuple[str, str]] = []
        index = load_index(self.store, listing, unreadable=unreadable)
        self.audit.table(ident, listing, index)
        database, table = ident[0], f"{ident[1]}.{ident[2]}"
        for key, why in unreadable:
            self.report.add(problem("unreadable_archive", key, f"invalid manifest set: {why}", database=database, table=table))
        if listing.legacy:
            self.legacy += 1
            self.report.add(problem("legacy_layout", layout.table_prefix(self.scope.root, *ident),
                                    f"{len(listing.legacy)} manifests, digests or withdrawal records in the legacy layout "
                                    "inside the table's folder, where engines reading the folder meet them",
                                    database=database, table=table))
        for kind, key, what in iceberg.check(self.cfg, self.store, *ident, listing=listing, index=index):
            self.report.add(problem(kind, key, what, database=database, table=table))
        yield from (Entry(i.key, i, None) for i in listing.strays)
        for key, info in listing.data.items():
            recorded = index.current(key)
            if recorded is None and index.expired.names(key):
                self.expiring += 1  # an expiry's record names it: a kill -9 came before its delete
                continue
            if recorded is None and index.withdrawn.names(key):
                self.withdrawn += 1  # taken back (its rows were archived again): not an archive
                continue
            yield Entry(key, info, recorded)
        # Manifests whose object is gone; an erasure's old object (its replacement supersedes it) went on purpose.
        gone = {k: r for k, r in index.objects.items() if k not in listing.data}
        done = replaced((r.key, r.sha256, r.replaces) for r in index.objects.values())
        for key in sorted(set(gone) - set(done)):
            yield Entry(key, None, gone[key])
        self.withdrawn += index.taken_back

    def expiring_note(self) -> str | None:
        if not self.expiring:
            return None
        return (f"{self.expiring} objects are expired (an expiry record names them) but not yet deleted: "
                "an interrupted expire; the next expire run deletes them")

    def note(self) -> str | None:
        if not self.withdrawn:
            return None
        return (f"{self.withdrawn} withdrawn batches (taken back; their rows were archived again or stayed in the "
                "table) were not checked: they do not count as archived")


def _tally(report: Report, c: Checked) -> None:
    s = report.summary
    s.objects += 1
    s.rows += c.rows
    s.bytes += c.bytes
    report.problems.extend(c.problems)
    for p in c.problems:
        log.debug("%s %s: %s", p.type, p.key, p.message)


def bounded_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], *, window: int) -> Iterator[R]:
    """Like pool.map, but with at most `window` items in flight, results in completion order, and the
    input consumed lazily: memory stays flat however long `items` is."""
    pending: set[Future[R]] = set()
    try:
        for item in items:
            pending.add(pool.submit(fn, item))
            if len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
    finally:
        for f in pending:
            f.cancel()


class _KeyFetcher:
    """Downloads the key column of each object in an overlap group, in parallel."""

    def __init__(self, store: Storage, pool: ThreadPoolExecutor) -> None:
        self.store = store
        self.pool = pool

    def prefetch(self, group: list[Span]) -> Callable[[Span], pa.ChunkedArray]:
        fetched = dict(zip((s.key for s in group), self.pool.map(self._keys, group)))
        return lambda s: fetched[s.key]

    def _keys(self, span: Span) -> pa.ChunkedArray:
        try:
            data = self.store.get(span.key)
        except Exception as exc:
            if is_not_found(exc):  # deleted since it was checked: nothing left to overlap
                return pa.chunked_array([], pa.int64())
            raise
        table = batch_writer.decode(data, fmt=batch_writer.format_of(span.key), columns=list(span.pk))[0]
        return key_array(table, span.pk)


def _s3_refused(exc: ClientError, bucket: str) -> Exception:
    code = exc.response.get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        return ConfigError(f"s3.bucket: bucket {bucket!r} does not exist")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    return S3Unavailable(f"S3 refused the request ({code or status}): {first_line(exc)}")
