"""The soak's accounting (scripts/soak.py), independent of the archiver's code: boto3, json and
pyarrow only. The archive holds a data object's rows when a manifest set in the table's control
folder lists the object (its key and the SHA-256 of its manifest) and no withdrawal record names
that same (key, manifest) pair: the documented layout (docs/runbooks.md, common/archive/layout.py). Every
row the writer expects (soak_writer.py) must be in exactly one place, table or archive, with the
last `v` it set; the data objects no set counts are reported as orphans."""
from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
from psycopg import sql

from soak_env import BUCKET, DATABASE, TABLE

CONTROL = f"_control/{DATABASE}/public.{TABLE}/"
DATA = f"{DATABASE}/public.{TABLE}/"


@dataclass
class Accounting:
    rows_archived: int = 0  # rows in the objects that count
    objects: int = 0  # data objects that count
    lost: list[int] = field(default_factory=list)  # expected, in neither table nor archive
    duplicated: list[int] = field(default_factory=list)  # in more than one place (or object)
    stale: list[int] = field(default_factory=list)  # once, but not with the v last written: a lost update
    extra: list[int] = field(default_factory=list)  # not expected (the writer deleted it), yet present
    orphans: list[str] = field(default_factory=list)  # data objects no manifest set counts
    missing: list[str] = field(default_factory=list)  # counted by a set, yet not in the bucket
    fallback_files: int = 0  # files still held in the fallback directory after the final run

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.stale or self.extra or self.missing or self.fallback_files)

    def line(self, cycles: int) -> str:
        return f"cycles {cycles}, rows archived {self.rows_archived}, lost {len(self.lost)}, duplicated {len(self.duplicated)}"

    def details(self) -> str:
        out = (f"objects {self.objects}, stale updates {len(self.stale)}, extra rows {len(self.extra)}, "
               f"orphan objects {len(self.orphans)}, missing objects {len(self.missing)}, files left in the fallback directory {self.fallback_files}")
        for name in ("lost", "duplicated", "stale", "extra", "orphans", "missing"):
            items = getattr(self, name)
            if items:
                out += f"\n  {name}: {sorted(items)[:20]}"
        return out


def account(s3: Any, dsn: str, expected: dict[int, int], fallback: Path) -> Accounting:
    """Table ∪ archive against `expected` (id -> v). Call with the writer stopped and no archiver
    running, after a clean run: the fallback directory is then drained."""
    acc = Accounting()
    seen: Counter[int] = Counter()
    version: dict[int, int] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for row_id, v in conn.execute(sql.SQL("SELECT id, v FROM {}").format(sql.Identifier(TABLE))):
            seen[row_id] += 1
            version[row_id] = v
    counted, data_keys = counted_objects(s3)
    acc.missing = sorted(counted - set(data_keys))
    for key in sorted(counted - set(acc.missing)):
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        table = pq.read_table(io.BytesIO(body), columns=["id", "v"])
        ids, vs = table.column("id").to_pylist(), table.column("v").to_pylist()
        acc.rows_archived += len(ids)
        for row_id, v in zip(ids, vs):
            seen[row_id] += 1
            version[row_id] = v
    acc.objects = len(counted) - len(acc.missing)
    acc.orphans = sorted(set(data_keys) - counted)
    acc.lost = [i for i in expected if seen[i] == 0]
    acc.duplicated = [i for i, n in seen.items() if n > 1]
    acc.stale = [i for i, v in expected.items() if seen[i] == 1 and version[i] != v]
    acc.extra = [i for i in seen if i not in expected]
    acc.fallback_files = sum(1 for p in fallback.rglob("*") if p.is_file() and not p.name.startswith(".")
                             and ".locks" not in p.parts) if fallback.exists() else 0
    return acc


def counted_objects(s3: Any) -> tuple[set[str], list[str]]:
    """(the data objects that count as archived, every data object in the table's folder)."""
    recorded: dict[tuple[str, str], int] = {}
    withdrawn: set[tuple[str, str | None]] = set()
    for key in _keys(s3, CONTROL):
        if "/manifests/" in key and key.endswith(".json"):
            doc = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            for entry in doc["entries"]:
                pair = (entry["manifest"]["key"], entry["manifest_sha256"])
                recorded[pair] = recorded.get(pair, 0) + 1
        elif "/withdrawn/" in key:
            doc = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            withdrawn.add((doc["key"], doc.get("manifest_sha256")))
    counted = {k for (k, sha) in recorded if (k, sha) not in withdrawn}
    data = [k for k in _keys(s3, DATA) if k.endswith(".parquet")]
    return counted, data


def _keys(s3: Any, prefix: str) -> list[str]:
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out
