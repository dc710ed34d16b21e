"""The digest chain check (issue 17, common/archive/digest.py): each table's digests are read oldest first;
each must name the one before it by key and sha256 (the first names none) and, with
s3.digest_key_env, carry a valid HMAC-SHA256 signature. Replaying the chain gives the objects the
archive should hold and what each should be: an object whose manifest now says other bytes, size
or rows than the digest recorded was rewritten (`digest_mismatch`); an object the chain holds that
is gone, or a digest missing or altered, breaks the chain (`digest_chain_broken`); an object no
digest records is `orphaned_file`, unless it predates the first digest (archives written before
digests existed validate as before, with a note) or is newer than the last one (stored by a run
still going, or one killed before its digest: the next run's digest records it; a note)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from common.archive import layout
from common.archive.digest import Digest, DigestEntry, Erasure, Expired, name, prefixes
from common.errors import DataIntegrityError
from common.archive.fallback import FallbackDir
from common.archive.manifest import sha256_hex
from common.archive.storage import ObjectInfo, S3Storage, Storage
from common.archive.table_index import TableIndex, TableListing
from common.archive.withdrawals import Withdrawn
from validate.inventory import Entry, TableId
from validate.objects import Checked
from validate.report import Problem, Report, problem


@dataclass
class _Table:
    objects: dict[str, Checked] = field(default_factory=dict)
    listed: dict[str, datetime | None] = field(default_factory=dict)  # every key listed, with its time
    digests: list[ObjectInfo] = field(default_factory=list)  # oldest first, both layouts
    recorded: set[str] = field(default_factory=set)  # keys with a manifest that counts
    withdrawn: Withdrawn = field(default_factory=Withdrawn)
    ident: TableId | None = None


@dataclass
class _Chain:
    live: dict[str, DigestEntry] = field(default_factory=dict)
    erasures: list[Erasure] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    holds: list[dict[str, Any]] = field(default_factory=list)
    first_at: datetime | None = None
    head_at: datetime | None = None
    problems: list[Problem] = field(default_factory=list)
    database: str | None = None
    table: str | None = None
    pending: set[str] = field(default_factory=set)  # stored, their moves not finished when the digest was written

    def add(self, key: str, what: str) -> None:
        self.problems.append(problem("digest_chain_broken", key, what, database=self.database, table=self.table))


class DigestAudit:
    def __init__(self, store: Storage, *, root: str, key_secret: bytes | None, fallback: FallbackDir | None) -> None:
        self.store, self.root = store, root
        self.key_secret, self.fallback = key_secret, fallback
        self.tables: dict[str, _Table] = {}  # by the table's folder

    def _table(self, key: str) -> _Table:
        return self.tables.setdefault(layout.table_root(key), _Table())

    def table(self, ident: TableId, listing: TableListing, index: TableIndex) -> None:
        t = self.tables.setdefault(layout.table_prefix(self.root, *ident), _Table())
        t.ident, t.digests, t.recorded, t.withdrawn = ident, listing.digests, set(index.objects), index.withdrawn

    def entry(self, e: Entry) -> None:
        if layout.parse_key(self.root, e.key) is not None and e.data is not None:
            self._table(e.key).listed[e.key] = e.data.last_modified

    def checked(self, c: Checked) -> None:
        if c.manifest is not None and layout.parse_key(self.root, c.key) is not None:
            self._table(c.key).objects[c.key] = c

    def finish(self, report: Report, *, complete: bool, superseded: AbstractSet[str] = frozenset()) -> None:
        """complete: the whole listing was checked (no --since), so a recorded object not listed is gone.
        superseded: objects an unfinished erasure replaced (validate/erasures.py), reported as that;
        the erasure's digest no longer records them."""
        undigested, uncovered, predating, unsigned = 0, 0, 0, 0
        for root in sorted(self.tables):
            t = self.tables[root]
            if not t.digests:
                undigested += bool(t.objects)
                continue
            chain = self._chain(t.digests)
            self._versions(t, chain)
            unsigned += len(t.digests) if self.key_secret is None else 0
            report.problems.extend(chain.problems)
            report.notes.extend(_erasure_notes(chain))
            report.notes.extend(_lifecycle_notes(chain))
            for key, c in sorted(t.objects.items()):
                if key in superseded:
                    continue
                recorded = chain.live.get(key)
                if recorded is not None:
                    if not c.problems:  # a damaged object is reported as such; this is for consistent rewrites
                        self._compare(c, recorded, report)
                    continue
                when = _utc(t.listed.get(key))
                # S3's LastModified has whole seconds: compare with the digests' times cut to them.
                if when is not None and chain.first_at is not None and when < _second(chain.first_at):
                    predating += 1
                elif when is None or chain.head_at is None or when >= _second(chain.head_at) or key in chain.pending:
                    uncovered += 1
                else:
                    report.add(problem("orphaned_file", key, "archive object in no digest: stored after the digests "
                                       "began but recorded by none (added behind the archiver's back?)",
                                       database=c.database, table=c.table))
            if complete:
                self._gone(root, t, chain, report)
        self._notes(report, undigested=undigested, uncovered=uncovered, predating=predating, unsigned=unsigned)

    # -- the chain ----------------------------------------------------------------------------------
    def _chain(self, infos: list[ObjectInfo]) -> _Chain:
        chain = _Chain()
        prev_key: str | None = None
        prev_sha: str | None = None
        for info in infos:
            data = bytes(self.store.get(info.key))
            try:
                d = Digest.from_bytes(data, key=info.key)
            except DataIntegrityError as exc:
                chain.problems.append(problem("digest_chain_broken", info.key, f"digest altered: {exc}"))
                prev_key, prev_sha = info.key, sha256_hex(data)
                continue
            chain.database, chain.table = d.database, f"{d.schema}.{d.table}"
            self._link(chain, info.key, d, prev_key, prev_sha)
            if self.key_secret is not None and not d.verify(self.key_secret):
                chain.add(info.key, "its HMAC-SHA256 signature does not verify with the configured key "
                          "(forged, or altered after signing)" if d.signature else "it carries no signature, "
                          "but s3.digest_key_env is configured")
            for removed in d.removed:
                chain.live.pop(removed, None)
            chain.live.update((e.key, e) for e in d.objects)
            chain.pending = (chain.pending | set(d.pending)) - set(chain.live) - set(d.removed)
            chain.erasures.extend(d.erasures)
            chain.expired.extend(d.expired)
            chain.holds.extend(d.holds)
            created = _parse(d.created_at)
            chain.first_at = chain.first_at or created
            if d.kind not in ("hold", "expire"):
                # They store no objects: an archive run killed before its digest is still the next
                # archive digest's to record, so its objects stay "not yet covered", not orphans.
                chain.head_at = created or chain.head_at
            prev_key, prev_sha = info.key, sha256_hex(data)
        return chain

    def _versions(self, t: _Table, chain: _Chain) -> None:
        """In a versioned bucket (every Object Lock bucket is) a digest removed or rewritten leaves
        its trace: a delete marker, or an older version. This is what catches the removal of the
        newest digest, which no later digest names."""
        if not isinstance(self.store, S3Storage) or t.ident is None:
            return
        versions: Counter[str] = Counter()
        for prefix in prefixes(self.root, *t.ident):
            pages = self.store.client.get_paginator("list_object_versions").paginate(Bucket=self.store.bucket,
                                                                                     Prefix=prefix)
            for page in pages:
                for marker in page.get("DeleteMarkers", []):
                    if marker.get("IsLatest") and not self._moved(marker["Key"], t):
                        chain.add(marker["Key"], "this digest was deleted (a delete marker hides it)")
                for v in page.get("Versions", []):
                    versions[v["Key"]] += 1
        for key, n in sorted(versions.items()):
            if n > 1:
                chain.add(key, f"this digest was overwritten ({n} versions): the chain records only the first")

    @staticmethod
    def _moved(key: str, t: _Table) -> bool:
        """A legacy digest deleted by --migrate-layout once its copy was in the control folder."""
        return not layout.in_control(key) and any(name(i.key) == name(key) and layout.in_control(i.key) for i in t.digests)

    @staticmethod
    def _link(chain: _Chain, key: str, d: Digest, prev_key: str | None, prev_sha: str | None) -> None:
        # By name: --migrate-layout moves a digest from the table's folder to its control folder.
        if (d.previous_key and name(d.previous_key)) == (prev_key and name(prev_key)) and d.previous_sha256 == prev_sha:
            return
        if prev_key is None:
            chain.add(key, f"the oldest digest left names a previous digest {d.previous_key} that is gone")
        elif name(d.previous_key or "") != name(prev_key):
            chain.add(key, f"names previous digest {d.previous_key}, but the digest before it is {prev_key} "
                      "(a digest was removed)")
        else:
            chain.add(key, f"the previous digest {prev_key} was altered: its sha256 is no longer the one recorded")

    def _compare(self, c: Checked, recorded: DigestEntry, report: Report) -> None:
        m = c.manifest
        assert m is not None
        diffs = [f"{what} {now} (digest: {then})" for what, now, then in
                 (("sha256", m.sha256[:16], recorded.sha256[:16]), ("size", m.size, recorded.size),
                  ("rows", m.rows, recorded.rows)) if str(now) != str(then)]
        if diffs:
            report.add(problem("digest_mismatch", c.key, "object and manifest differ from what the digest recorded: "
                               + ", ".join(diffs), database=c.database, table=c.table))

    def _gone(self, root: str, t: _Table, chain: _Chain, report: Report) -> None:
        for key in sorted(set(chain.live) - set(t.listed)):
            if t.withdrawn.names(key) or self._pending(key) or key in t.recorded:
                continue  # taken back; waiting in the fallback directory; or reported as missing_object
            report.add(problem("digest_chain_broken", key, f"recorded by the digest chain of {root} but gone "
                               "(object and manifest removed)", database=chain.database, table=chain.table))

    def _pending(self, key: str) -> bool:
        return self.fallback is not None and self.fallback.root.is_dir() and self.fallback.head(key) is not None

    @staticmethod
    def _notes(report: Report, *, undigested: int, uncovered: int, predating: int, unsigned: int) -> None:
        if undigested:
            report.notes.append(f"{undigested} tables have no digests (archived before digests existed): "
                                "validated as before, without the tamper-evidence chain")
        if predating:
            report.notes.append(f"{predating} objects predate the first digest of their table: not covered by the chain")
        if uncovered:
            report.notes.append(f"{uncovered} objects are newer than their table's last digest: not yet covered "
                                "(a run still going, or one stopped before its digest; the next run's digest records them)")
        if unsigned:
            report.notes.append(f"{unsigned} digests were not checked for a signature: s3.digest_key_env is not configured")


def _erasure_notes(chain: _Chain) -> list[str]:
    groups: Counter[tuple[str, str]] = Counter()
    objects: Counter[tuple[str, str]] = Counter()
    for e in chain.erasures:
        groups[(e.erased_at, e.predicate_sha256)] += e.rows_removed
        objects[(e.erased_at, e.predicate_sha256)] += 1
    return [f"erasure at {when} in {chain.database} {chain.table}: {rows} rows removed from {objects[(when, pred)]} "
            f"objects (predicate sha256 {pred[:16]}…)" for (when, pred), rows in sorted(groups.items())]


def _lifecycle_notes(chain: _Chain) -> list[str]:
    """What expiry deleted on purpose (so never reported as lost) and the legal holds the chain records."""
    runs: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    for e in chain.expired:
        runs[e.expired_at] += 1
        rows[e.expired_at] += e.rows
    notes = [f"expiry at {when} in {chain.database} {chain.table}: {n} objects ({rows[when]} rows) deleted past "
             "their archive retention" for when, n in sorted(runs.items())]
    released = {h.get("hold_id") for h in chain.holds if h.get("action") == "release"}
    active = sorted({str(h.get("hold_id")) for h in chain.holds if h.get("action") == "place"} - released)
    if active:
        notes.append(f"{len(active)} legal holds in force on {chain.database} {chain.table}: {', '.join(active)}")
    return notes


def _second(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _parse(text: str | None) -> datetime | None:
    try:
        return _utc(datetime.fromisoformat(text)) if text else None
    except ValueError:
        return None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
