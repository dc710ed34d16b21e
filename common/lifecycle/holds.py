"""Legal holds (issue 29): what keeps a table's archived objects from expiry and erasure until the
hold is released, whatever their age.

A hold is a record in the table's control folder, `<control folder>/holds/<hold id>.json`: its
scope (the whole table, a range of UTC days, or the rows a --where selects), the reason, who placed
it and when, and the objects it held when placed. A release is a second record,
`<hold id>.release.json`, never a change of the first: under Object Lock neither may be changed,
and the pair is the evidence. Both are also recorded in the table's digest chain (kind `hold`).

A hold holds every object in its scope, including objects written after it was placed: its scope,
not its list of objects, is what every tool judges (common/lifecycle/hold_scope.py). The list is the record
of what the hold found when placed, and the objects whose S3 legal hold it turned on."""
from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from common.archive import layout
from common.errors import DataIntegrityError
from common.archive.manifest import sha256_hex

RELEASE_SUFFIX = ".release.json"


@dataclass
class Hold:
    hold_id: str
    database: str
    schema: str
    table: str
    scope: str  # table | dates | where
    reason: str
    placed_by: str
    placed_at: str
    start_date: str | None = None  # dates: the first and last UTC day held (either may be open)
    end_date: str | None = None
    where: str | None = None  # where: a DuckDB condition (query's engine)
    objects: list[str] = field(default_factory=list)  # held when placed
    #: Set from the release record when one exists (not stored in the hold record).
    released: Release | None = None

    @property
    def active(self) -> bool:
        return self.released is None

    def covers_day(self, day: date) -> bool:
        """Whether an object of this UTC day is in the scope's dates (a where-scope is judged on rows)."""
        if self.scope == "table":
            return True
        if self.scope == "dates":
            return ((self.start_date is None or day >= date.fromisoformat(self.start_date))
                    and (self.end_date is None or day <= date.fromisoformat(self.end_date)))
        return False

    def describe(self) -> str:
        if self.scope == "table":
            return "the whole table"
        if self.scope == "dates":
            return f"days {self.start_date or '…'} to {self.end_date or '…'}"
        return f"rows where {self.where}"

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        doc.pop("released")
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["active"] = self.active
        doc["objects"] = len(self.objects)
        return doc

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> Hold:
        try:
            doc = json.loads(data)
            return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__ and k != "released"})
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataIntegrityError(f"legal hold record {key} is unreadable: {exc}") from None


@dataclass(frozen=True)
class Release:
    hold_id: str
    reason: str
    released_by: str
    released_at: str

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> Release:
        try:
            doc = json.loads(data)
            return cls(**{k: doc.get(k) for k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError) as exc:
            raise DataIntegrityError(f"legal hold release {key} is unreadable: {exc}") from None


def folder(prefix: str, database: str, schema: str, table: str) -> str:
    return f"{layout.control_prefix(prefix, database, schema, table)}{layout.HOLDS}"


def new_id(now: datetime, reason: str) -> str:
    return f"hold-{now:%Y%m%dT%H%M%S}-{sha256_hex(f'{now.isoformat()} {reason} {os.getpid()}'.encode())[:8]}"


def who(by: str | None) -> str:
    """--by, or the OS user running the tool."""
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def write_hold(store: Any, prefix: str, hold: Hold) -> str:
    key = f"{folder(prefix, hold.database, hold.schema, hold.table)}{hold.hold_id}.json"
    data = hold.to_bytes()
    store.put(key, data, sha256=sha256_hex(data))
    return key


def write_release(store: Any, prefix: str, hold: Hold, release: Release) -> str:
    key = f"{folder(prefix, hold.database, hold.schema, hold.table)}{hold.hold_id}{RELEASE_SUFFIX}"
    data = release.to_bytes()
    store.put(key, data, sha256=sha256_hex(data))
    return key


def load(store: Any, prefix: str, database: str, schema: str, table: str) -> list[Hold]:
    """The table's holds, oldest first, each with its release when there is one (one listing)."""
    holds: dict[str, Hold] = {}
    releases: dict[str, Release] = {}
    for info in store.list(folder(prefix, database, schema, table)):
        name = info.key.rpartition("/")[2]
        if name.endswith(RELEASE_SUFFIX):
            r = Release.from_bytes(bytes(store.get(info.key)), key=info.key)
            releases[r.hold_id] = r
        elif name.endswith(".json"):
            h = Hold.from_bytes(bytes(store.get(info.key)), key=info.key)
            holds[h.hold_id] = h
    for hold_id, r in releases.items():
        if hold_id in holds:
            holds[hold_id].released = r
    return sorted(holds.values(), key=lambda h: (h.placed_at, h.hold_id))


def active(store: Any, prefix: str, database: str, schema: str, table: str) -> list[Hold]:
    return [h for h in load(store, prefix, database, schema, table) if h.active]


def event(hold: Hold, action: str) -> dict[str, Any]:
    """What the digest chain records of a placement or a release (common/archive/digest.py, kind `hold`)."""
    if action == "release":
        assert hold.released is not None
        return {"hold_id": hold.hold_id, "action": "release", "reason": hold.released.reason,
                "by": hold.released.released_by, "at": hold.released.released_at, "scope": hold.describe(),
                "objects": len(hold.objects)}
    return {"hold_id": hold.hold_id, "action": "place", "reason": hold.reason, "by": hold.placed_by,
            "at": hold.placed_at, "scope": hold.describe(), "objects": len(hold.objects)}


def age_days(hold: Hold, now: datetime) -> float:
    placed = datetime.fromisoformat(hold.placed_at)
    placed = placed.replace(tzinfo=timezone.utc) if placed.tzinfo is None else placed
    return max(0.0, (now - placed).total_seconds() / 86400)
