"""Run digests (issue 17), after AWS CloudTrail's log file validation: per table, each run that
stored objects (and each erasure) writes one digest object listing every object it made part of the
archive (key, sha256, size, rows, and the sha256 of its manifest's bytes), the objects it took out
of it (an erasure's replaced objects, with what was erased: rows, when, the predicate's sha256,
never the values), and the sha256 of the previous digest's bytes. The digests form a chain from
the first one on; with `s3.digest_key_env` each is also signed with HMAC-SHA256 of that secret.

Digests live in the table's control folder, `digests/` (common/archive/layout.py), outside the table's
folder, so no engine reads them as data; archives of the legacy layout keep theirs in
`<table location>/_digests/`, and the chain reads both (a digest is known by its name in either).
Their names sort in the order they were written (UTC time to the microsecond), so the chain's head
is the last name listed."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from common.archive import layout
from common.config import Config
from common.errors import ConfigError, DataIntegrityError
from common.archive.manifest import Manifest, sha256_hex

DIGEST_VERSION = 1
SIGNATURE_ALGORITHM = "HMAC-SHA256"


@dataclass(frozen=True)
class DigestEntry:
    key: str
    sha256: str
    size: int
    rows: int
    manifest_sha256: str

    @classmethod
    def of(cls, manifest: Manifest, manifest_bytes: bytes | None = None) -> DigestEntry:
        """The entry of a stored batch; its manifest's bytes are what the sink stored (to_bytes)."""
        mbytes = manifest.to_bytes() if manifest_bytes is None else manifest_bytes
        return cls(manifest.key, manifest.sha256, manifest.size, manifest.rows, sha256_hex(mbytes))


@dataclass(frozen=True)
class Erasure:
    """One object rewritten by `erase`: what left the archive and what replaced it."""

    removed_key: str
    removed_sha256: str
    rows_removed: int
    replacement_key: str | None  # None: every row of the object was erased
    erased_at: str
    predicate_sha256: str


@dataclass(frozen=True)
class Expired:
    """One object deleted by `expire` (issue 29): its rows' time was past the table's archive
    retention. validate tells it from a lost object by this entry."""

    key: str
    sha256: str
    rows: int
    manifest_sha256: str
    max_ts: str
    expired_at: str  # the database's clock
    retention_days: int


#: Fields added after digests were first signed: left out of a digest's bytes while empty, so the
#: signature and sha256 of every digest written before them stay what they were.
_OPTIONAL = ("expired", "holds")


@dataclass
class Digest:
    database: str
    schema: str
    table: str
    created_at: str
    previous_key: str | None
    previous_sha256: str | None
    objects: list[DigestEntry] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    erasures: list[Erasure] = field(default_factory=list)
    #: Objects stored whose moves had not finished (a delete failed, the run stopped): a later
    #: digest records them once their move finishes, or they are taken back.
    pending: list[str] = field(default_factory=list)
    kind: str = "archive"  # archive | erase | expire | hold
    #: Objects expiry deleted (kind expire).
    expired: list[Expired] = field(default_factory=list)
    #: Legal holds placed or released (kind hold): {"hold_id", "action", "reason", "by", "at", "scope", "objects"}.
    holds: list[dict[str, Any]] = field(default_factory=list)
    digest_version: int = DIGEST_VERSION
    signature_algorithm: str | None = None
    signature: str | None = None

    def body(self) -> bytes:
        """The canonical bytes the signature covers: everything but the signature itself."""
        doc = _document(self)
        doc.pop("signature")
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, secret: bytes | None) -> Digest:
        if secret is not None:
            self.signature_algorithm = SIGNATURE_ALGORITHM
            self.signature = sign(self.body(), secret)
        return self

    def to_bytes(self) -> bytes:
        return json.dumps(_document(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> Digest:
        try:
            doc = json.loads(data)
            doc["objects"] = [DigestEntry(**e) for e in doc.get("objects", [])]
            doc["erasures"] = [Erasure(**e) for e in doc.get("erasures", [])]
            doc["expired"] = [Expired(**e) for e in doc.get("expired", [])]
            known = set(cls.__dataclass_fields__)
            return cls(**{k: v for k, v in doc.items() if k in known})
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise DataIntegrityError(f"digest {key} is unreadable: {exc}") from None

    def verify(self, secret: bytes) -> bool:
        return self.signature is not None and hmac.compare_digest(self.signature, sign(self.body(), secret))


def _document(d: Digest) -> dict[str, Any]:
    doc = asdict(d)
    for name in _OPTIONAL:
        if not doc.get(name):
            doc.pop(name, None)
    return doc


def sign(body: bytes, secret: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def secret(cfg: Config) -> bytes | None:
    """The signing secret named by s3.digest_key_env; None when no signing is configured. A
    configured variable that is not set is a config error: an unsigned digest, or a chain checked
    without its signatures, would look like evidence and be none."""
    name = cfg.s3.digest_key_env
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{cfg.source}: s3.digest_key_env: environment variable {name} is not set "
                          "(it holds the secret that signs the run digests)")
    return value.encode()


def prefixes(prefix: str, database: str, schema: str, table: str) -> tuple[str, str]:
    """Where a table's digests are: its control folder's `digests/`, and the legacy layout's
    `_digests/` inside the table's folder."""
    return (f"{layout.control_prefix(prefix, database, schema, table)}{layout.DIGESTS}",
            f"{layout.table_prefix(prefix, database, schema, table)}{layout.LEGACY_DIGESTS_DIR}")


def digest_key(control: str, created: datetime, body: bytes) -> str:
    return f"{control}{layout.DIGESTS}{created:%Y%m%dT%H%M%S%fZ}-{sha256_hex(body)[:12]}.json"


def name(key: str) -> str:
    """A digest's name, the same in either layout: what orders the chain and what links name."""
    return key.rpartition("/")[2]


def chain_keys(store: Any, prefix: str, database: str, schema: str, table: str) -> list[str]:
    """The table's digests, oldest first; one kept in both layouts counts once (the current one)."""
    by_name: dict[str, str] = {}
    for p in prefixes(prefix, database, schema, table):
        for info in store.list(p):
            if info.key.endswith(".json"):
                by_name.setdefault(name(info.key), info.key)
    return [by_name[n] for n in sorted(by_name)]


@dataclass(frozen=True)
class Head:
    key: str
    sha256: str
    digest: Digest


def head(store: Any, prefix: str, database: str, schema: str, table: str) -> Head | None:
    """The chain's newest digest (None before the first)."""
    keys = chain_keys(store, prefix, database, schema, table)
    if not keys:
        return None
    data = bytes(store.get(keys[-1]))
    return Head(keys[-1], sha256_hex(data), Digest.from_bytes(data, key=keys[-1]))


def write(store: Any, *, prefix: str, database: str, schema: str, table: str, objects: list[DigestEntry],
          removed: list[str] | None = None, erasures: list[Erasure] | None = None, kind: str = "archive",
          pending: list[str] | None = None, expired: list[Expired] | None = None,
          holds: list[dict[str, Any]] | None = None,
          key_secret: bytes | None = None, previous: Head | None = None,
          now: datetime | None = None) -> str:
    """Append a digest to the table's chain; returns its key. `previous`: the head the caller
    read (read here when not given)."""
    prev = previous if previous is not None else head(store, prefix, database, schema, table)
    created = now or datetime.now(timezone.utc)
    d = Digest(database, schema, table, created.isoformat(), prev.key if prev else None, prev.sha256 if prev else None,
               objects, removed or [], erasures or [], pending or [], kind, expired or [], holds or []).signed(key_secret)
    data = d.to_bytes()
    control = layout.control_prefix(prefix, database, schema, table)
    key = digest_key(control, created, d.body())
    if prev is not None and name(key) <= name(prev.key):  # a clock behind the last digest's: keep the chain's order
        key = f"{control}{layout.DIGESTS}{name(prev.key)[:-len('.json')]}~{sha256_hex(d.body())[:12]}.json"
    store.put(key, data, sha256=sha256_hex(data))
    return key


def replay(store: Any, prefix: str, database: str, schema: str, table: str) -> dict[str, DigestEntry]:
    """The objects the table's chain records as part of the archive now (no verification: that is
    validate's work)."""
    live: dict[str, DigestEntry] = {}
    for key in chain_keys(store, prefix, database, schema, table):
        d = Digest.from_bytes(bytes(store.get(key)), key=key)
        for removed in d.removed:
            live.pop(removed, None)
        live.update((e.key, e) for e in d.objects)
    return live
