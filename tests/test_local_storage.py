"""Directory stores (common/archive/storage.py LocalStorage: local_dir and the fallback directory) keep S3's
keys, whose components may be longer than a filesystem name (255 bytes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.archive import layout
from common.archive.fallback import FallbackDir
from common.archive.manifest import sha256_hex
from common.archive.storage import LocalStorage

DAY_KEY = "year=2024/month=01/day=01/part-20240101-abc.parquet"
#: a schema.table of non-ASCII names as long as PostgreSQL allows, as layout quotes it: ~380 bytes
LONGEST = layout.table_prefix("", "production_db", "Ü" + "ü" * 31, "T" + "é" * 31)


@pytest.mark.parametrize("key", [
    f"production_db/public.audit_logs/{DAY_KEY}",
    f"{LONGEST}{DAY_KEY}",
    f"{'prefix-' * 40}/{LONGEST}{DAY_KEY}",  # an operator's long s3.prefix too
], ids=["short", "longest table folder", "long prefix"])
def test_a_key_round_trips_whatever_the_length_of_its_components(tmp_path: Path, key: str) -> None:
    store = LocalStorage(tmp_path)
    store.put(key, b"rows", sha256=sha256_hex(b"rows"))
    assert store.get(key) == b"rows"
    assert store.head(key) is not None and store.head(key).size == 4  # type: ignore[union-attr]
    assert [o.key for o in store.list("")] == [key]
    assert all(len(p.name.encode()) <= 255 for p in tmp_path.rglob("*"))
    store.delete(key)
    assert store.head(key) is None and list(store.list("")) == []


def test_a_key_whose_components_fit_keeps_its_path(tmp_path: Path) -> None:
    """Everything written before the long keys lies where it always did."""
    key = f"production_db/public.audit_logs/{DAY_KEY}"
    LocalStorage(tmp_path).put(key, b"rows", sha256=sha256_hex(b"rows"))
    assert (tmp_path / key).read_bytes() == b"rows"


def test_a_long_key_is_quarantined_and_listed_there(tmp_path: Path) -> None:
    fallback = FallbackDir(tmp_path)
    key = f"{LONGEST}{DAY_KEY}"
    fallback.put(key, b"rows", sha256=sha256_hex(b"rows"))
    fallback.quarantine(key)
    assert list(fallback.list("")) == []
    quarantined = fallback.quarantined()
    assert quarantined is not None and [o.key for o in quarantined.list("")] == [key]
