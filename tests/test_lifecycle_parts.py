"""Parts of the lifecycle (issue 29) that need no S3: a hold's scope by day, the manifests expiry
records name, and digests signed before the expire/hold fields existed verifying as they did."""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import date

from common.archive import digest
from common.archive.expirations import ExpiredObject, ExpiryRecord, ExpiredSet
from common.lifecycle.holds import Hold
from common.archive.table_index import TableIndex
from common.archive.withdrawals import Withdrawn
from test_validate_parts import recorded


def hold(scope: str, start: str | None = None, end: str | None = None) -> Hold:
    return Hold("h", "db", "public", "t", scope, "why", "me", "2026-01-01T00:00:00+00:00", start_date=start, end_date=end,
                where="id = 1" if scope == "where" else None)


def test_a_dates_hold_covers_its_days_inclusive_and_open_ends() -> None:
    closed, open_start = hold("dates", "2026-03-01", "2026-03-31"), hold("dates", None, "2026-03-31")
    assert [closed.covers_day(date(2026, 3, d)) for d in (1, 31)] == [True, True]
    assert [closed.covers_day(d) for d in (date(2026, 2, 28), date(2026, 4, 1))] == [False, False]
    assert open_start.covers_day(date(1999, 1, 1)) and not open_start.covers_day(date(2026, 4, 1))
    assert hold("table").covers_day(date(1, 1, 1)) and not hold("where").covers_day(date(2026, 3, 1))


def test_an_expiry_record_uncounts_exactly_the_manifest_it_names() -> None:
    key = "db/public.t/year=2026/month=01/day=01/part-a.parquet"
    old, new = recorded(key, "a" * 64), recorded(key, "b" * 64)
    record = ExpiryRecord("db", "public", "t", "2026-06-01T00:00:00+00:00", 30, "2026-05-02T00:00:00+00:00",
                          [ExpiredObject(key, "a" * 64, "0" * 64, 1, "2026-01-01T00:00:00+00:00")])
    parsed = ExpiryRecord.from_bytes(record.to_bytes(), key="r")
    assert TableIndex([old], Withdrawn(), ExpiredSet([parsed])).current(key) is None
    index = TableIndex([old, new], Withdrawn(), ExpiredSet([parsed]))  # the same rows archived again later
    assert index.current(key) is new and index.expired_count == 1


def test_a_digest_signed_before_the_lifecycle_fields_still_verifies() -> None:
    d = digest.Digest("db", "public", "t", "2026-01-01T00:00:00+00:00", None, None,
                      [digest.DigestEntry("k", "s" * 64, 1, 1, "m" * 64)])
    old = asdict(d)
    for name in ("expired", "holds", "signature"):
        old.pop(name)  # what a digest was before issue 29
    old["signature_algorithm"] = digest.SIGNATURE_ALGORITHM
    old["signature"] = digest.sign(json.dumps({**old, "signature_algorithm": digest.SIGNATURE_ALGORITHM},
                                              sort_keys=True, separators=(",", ":")).encode(), b"secret")
    parsed = digest.Digest.from_bytes(json.dumps(old).encode(), key="k")
    assert parsed.verify(b"secret") and parsed.expired == [] and parsed.holds == []
    assert "expired" not in json.loads(parsed.to_bytes()) and "holds" not in json.loads(parsed.to_bytes())
