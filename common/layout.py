"""Archive key layout (issue 2): <prefix>/<database>/<schema>.<table>/year=YYYY/month=MM/day=DD/<name>.
Names are percent-quoted so a hostile table name cannot climb out of its folder.

Each object's manifest is a sidecar in the same folder named `_<name>.manifest.json` (issue 16):
Spark, Hive, Trino, Athena and pyarrow.dataset skip names that start with `_` or `.` (Hadoop's
hidden-file rule), so under a table's location they see only the data. Archives written before
that keep `<name>.manifest.json` (the legacy sidecar): every reader accepts both, and
`python -m archiver.main --migrate-manifests` moves the old ones."""
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


#: Hidden folders under a table's location holding no rows (issue 17): the run digests and the
#: records of batches taken back under Object Lock. Hidden (`_`) so query engines skip them; no
#: year= partition, so parse_key returns None for them and no reader takes them for data.
DIGESTS_DIR = "_digests/"
WITHDRAWN_DIR = "_withdrawn/"


def is_control_key(key: str) -> bool:
    """A digest or withdrawal record, not an archive object, manifest or stray."""
    return f"/{DIGESTS_DIR}" in key or f"/{WITHDRAWN_DIR}" in key or key.startswith((DIGESTS_DIR, WITHDRAWN_DIR))


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
