"""Archive key layout (issue 2): <prefix>/<database>/<schema>.<table>/year=YYYY/month=MM/day=DD/<name>.
Names are percent-quoted so a hostile table name cannot climb out of its folder.

A table's folder holds its data objects and nothing else (issue 27): Spark, Polars, DuckDB,
pyarrow.dataset, Athena and Trino pointed at it read the table with no filter. Everything else
about the table (manifest sets, run digests, withdrawal records, and what later tools record:
holds, expiries, Iceberg metadata) lives in its control folder, outside every table's folder:

    <prefix>/_control/<database>/<schema>.<table>/manifests/   one manifest set per commit (common/archive/manifest_sets.py)
                                                  digests/     the run digest chain (common/archive/digest.py)
                                                  withdrawn/   batches taken back (common/archive/withdrawals.py)
                                                  holds/       legal holds and their releases (common/lifecycle/holds.py)
                                                  expired/     objects deleted by expiry (common/archive/expirations.py)
                                                  iceberg/     the table's Iceberg metadata, with an
                                                               SQL catalog (common/iceberg)

A configured database may not be named `_control` (common/config.py).

Archives written before keep the legacy layout inside the table's folder: per-object sidecars
`_<name>.manifest.json` (issue 16) or `<name>.manifest.json` (before it), and the hidden folders
`_digests/` and `_withdrawn/`. Every reader still accepts them; validate reports them as
`legacy_layout` and `python -m archiver.main --migrate-layout` moves them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from urllib.parse import quote, unquote

MANIFEST_SUFFIX = ".manifest.json"
_PART_RE = re.compile(r"^year=(\d{4})/month=(\d{2})/day=(\d{2})/([^/]+)$")


def _q(part: str) -> str:
    return quote(part, safe="-_.@+=")


def join(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def table_prefix(prefix: str, database: str, schema: str, table: str) -> str:
    return join(prefix, f"{_q(database)}/{_q(schema)}.{_q(table)}/")


def database_prefix(prefix: str, database: str) -> str:
    return join(prefix, f"{_q(database)}/")


#: The folder under the archive prefix that holds every table's control folder.
CONTROL = "_control"
#: The parts of a table's control folder.
MANIFESTS = "manifests/"
DIGESTS = "digests/"
WITHDRAWN = "withdrawn/"
HOLDS = "holds/"
EXPIRED = "expired/"


def control_root(prefix: str) -> str:
    """<prefix>/_control/: every table's control folder is under it."""
    return join(prefix, f"{CONTROL}/")


def control_prefix(prefix: str, database: str, schema: str, table: str) -> str:
    """<prefix>/_control/<database>/<schema>.<table>/: the table's control folder."""
    return join(prefix, f"{CONTROL}/{_q(database)}/{_q(schema)}.{_q(table)}/")


def control_database_prefix(prefix: str, database: str) -> str:
    return join(prefix, f"{CONTROL}/{_q(database)}/")


def control_of(prefix: str, data_key: str) -> str:
    """The control folder of the table a data object (or anything under its folder) belongs to."""
    base = join(prefix, "")
    rest = data_key[len(base):] if base and data_key.startswith(base) else data_key
    database, _, tail = rest.partition("/")
    folder = tail.partition("/")[0]
    return join(prefix, f"{CONTROL}/{database}/{folder}/")


def table_of_control(prefix: str, key: str) -> tuple[str, str, str] | None:
    """(database, schema, table) of a key under a control folder; None for any other key."""
    base = control_root(prefix)
    if not key.startswith(base):
        return None
    parts = key[len(base):].split("/", 2)
    if len(parts) < 3 or "." not in parts[1]:
        return None
    schema, _, table = parts[1].partition(".")
    return unquote(parts[0]), unquote(schema), unquote(table)


def object_key(prefix: str, database: str, schema: str, table: str, day: date, name: str) -> str:
    return (f"{table_prefix(prefix, database, schema, table)}"
            f"year={day.year:04d}/month={day.month:02d}/day={day.day:02d}/{_q(name)}")


#: What starts a hidden sidecar's name (Hadoop's hidden-file rule).
HIDDEN = "_"


def manifest_key(key: str) -> str:
    """Where the manifest of data object `key` is written: a hidden sidecar beside it."""
    folder, slash, name = key.rpartition("/")
    return f"{folder}{slash}{HIDDEN}{name}{MANIFEST_SUFFIX}"


def legacy_manifest_key(key: str) -> str:
    """Where archives written before the hidden sidecars keep the manifest of `key`."""
    return key + MANIFEST_SUFFIX


def manifest_keys(key: str) -> tuple[str, str]:
    """Both places a data object's manifest may be, the current one first."""
    return manifest_key(key), legacy_manifest_key(key)


def is_manifest(key: str) -> bool:
    return key.endswith(MANIFEST_SUFFIX)


def is_legacy_manifest(key: str) -> bool:
    return is_manifest(key) and not key.rpartition("/")[2].startswith(HIDDEN)


def data_key(manifest: str) -> str:
    """The data object a manifest (of either layout) describes. Data object names never start with
    `_` (the archiver names them part-...), so the hidden prefix is unambiguous."""
    folder, slash, name = manifest[: -len(MANIFEST_SUFFIX)].rpartition("/")
    return f"{folder}{slash}{name[len(HIDDEN):] if name.startswith(HIDDEN) else name}"


#: The legacy layout's hidden folders under a table's location (issue 17): the run digests and the
#: records of batches taken back under Object Lock. No year= partition, so parse_key returns None
#: for them and no reader takes them for data.
LEGACY_DIGESTS_DIR = "_digests/"
LEGACY_WITHDRAWN_DIR = "_withdrawn/"


def is_control_key(key: str) -> bool:
    """A key that holds no rows and is no per-object manifest: anything in a control folder
    (manifest sets included), and the legacy digests and withdrawal records inside a table's folder."""
    return in_control(key) or is_legacy_control(key)


def is_legacy_control(key: str) -> bool:
    """A legacy digest or withdrawal record (inside a table's folder)."""
    return any(f"/{d}" in key or key.startswith(d) for d in (LEGACY_DIGESTS_DIR, LEGACY_WITHDRAWN_DIR))


def in_control(key: str) -> bool:
    """Whether the key lies in a control folder (the current layout's)."""
    return key.startswith(f"{CONTROL}/") or f"/{CONTROL}/" in key


def is_manifest_set(key: str) -> bool:
    return in_control(key) and f"/{MANIFESTS}" in key and key.endswith(".json")


def is_legacy_digest(key: str) -> bool:
    return (f"/{LEGACY_DIGESTS_DIR}" in key or key.startswith(LEGACY_DIGESTS_DIR)) and key.endswith(".json")


def is_legacy_record(key: str) -> bool:
    return (f"/{LEGACY_WITHDRAWN_DIR}" in key or key.startswith(LEGACY_WITHDRAWN_DIR)) and key.endswith(".json")


def is_legacy(key: str) -> bool:
    """A key of the legacy layout: a per-object sidecar manifest, a digest or a withdrawal record
    inside a table's folder (validate's `legacy_layout`; --migrate-layout moves them)."""
    return (is_manifest(key) and not in_control(key)) or is_legacy_control(key)


def table_root(key: str) -> str:
    """The table location (ending in /) of a data object key <table>/year=/month=/day=/<name>."""
    return key.rsplit("/", 4)[0] + "/"


@dataclass(frozen=True)
class ParsedKey:
    database: str
    schema: str
    table: str
    day: date
    name: str


def parse_key(prefix: str, key: str) -> ParsedKey | None:
    """Split a key back into its parts; None for keys outside the layout (strays)."""
    base = join(prefix, "")
    if base and not key.startswith(base):
        return None
    rest = key[len(base):]
    parts = rest.split("/", 2)
    if len(parts) != 3 or "." not in parts[1]:
        return None
    m = _PART_RE.match(parts[2])
    if not m:
        return None
    schema, _, table = parts[1].partition(".")
    try:
        day = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
    return ParsedKey(unquote(parts[0]), unquote(schema), unquote(table), day, unquote(m.group(4)))
