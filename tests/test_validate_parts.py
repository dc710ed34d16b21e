"""validate's building blocks on their own: pairing a listing with manifests as a stream, comparing key
sets of overlapping objects, the bounded worker map, and the report formats."""
from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pytest

from common.archive.storage import ObjectInfo
from validate.app import Progress
from validate.checks import bounded_map
from common.archive.manifest import Manifest
from common.archive.manifest_sets import Recorded
from common.archive.table_index import TableIndex, TableListing, by_table
from common.archive.withdrawals import Withdrawal, Withdrawn
from validate.inventory import Scope, tables
from validate.objects import Checked, utc_days
from validate.overlap import OverlapFinder, Span, shared_keys
from validate.report import PROBLEM_TYPES, Problem, Report, problem

M = ".manifest.json"


def infos(*keys: str) -> list[ObjectInfo]:
    return [ObjectInfo(k, 10) for k in keys]


def recorded(key: str, sha: str, source: str = "_control/db/public.t/manifests/1.json") -> Recorded:
    m = Manifest(key=key, sha256="0" * 64, size=10, rows=1, database="db", schema="public", table="t",
                 primary_key="id", timestamp_column="ts", min_pk=1, max_pk=1, min_ts="", max_ts="",
                 schema_fingerprint="", format="parquet", format_version=1, archiver_version="t", created_at="")
    return Recorded(m, sha, None, source)


# -- one table at a time -------------------------------------------------------------------------
DAY = "year=2026/month=01/day=02"


def test_a_listing_is_cut_into_its_tables_and_strays() -> None:
    keys = ["db/public.a/" + DAY + "/part-1.parquet", "db/public.a/" + DAY + "/part-2.parquet",
            "db/public.a_b/" + DAY + "/part-1.parquet", "db/notes.txt", "top.txt"]
    cut = [(t, [i.key for i in group]) for t, group in by_table(infos(*keys), "")]
    assert cut == [(("db", "public", "a"), keys[:2]), (("db", "public", "a_b"), keys[2:3]), (None, keys[3:])]


def test_a_tables_keys_are_sorted_into_what_they_are() -> None:
    t = "db/public.t/"
    c = "_control/db/public.t/"
    data = t + DAY + "/part-1.parquet"
    listing = TableListing("")
    for info in infos(data, t + DAY + "/_part-1.parquet" + M, t + DAY + "/part-1.parquet" + M, t + "_digests/1.json",
                      t + "_withdrawn/x.json", t + DAY + "/notes.csv", c + "manifests/2.json", c + "manifests/1.json",
                      c + "digests/1.json", c + "withdrawn/y.json", c + "holds/h.json"):
        listing.add(info)
    listing.finish()
    assert list(listing.data) == [data]
    assert listing.sidecars[data].key == t + DAY + "/_part-1.parquet" + M  # the hidden name stands for both
    assert [i.key for i in listing.sets] == [c + "manifests/1.json", c + "manifests/2.json"]
    assert [i.key for i in listing.digests] == [c + "digests/1.json"]  # one digest in both layouts counts once
    assert sorted(i.key for i in listing.records) == sorted([t + "_withdrawn/x.json", c + "withdrawn/y.json"])
    assert [i.key for i in listing.strays] == [t + DAY + "/notes.csv"]
    assert [i.key for i in listing.others] == [c + "holds/h.json"]
    assert len(listing.legacy) == 4


def test_a_manifest_recorded_twice_counts_once_as_its_later_record() -> None:
    key = "db/public.t/" + DAY + "/part-1.parquet"
    sidecar = recorded(key, "a" * 64, source="db/public.t/" + DAY + "/_part-1.parquet" + M)
    index = TableIndex([sidecar, recorded(key, "a" * 64)], Withdrawn())
    assert index.recorded(key) == [index.objects[key]] and not index.objects[key].legacy


def test_the_newest_manifest_not_withdrawn_is_the_one_that_counts() -> None:
    key = "db/public.t/" + DAY + "/part-1.parquet"
    old, new = recorded(key, "a" * 64), recorded(key, "b" * 64)
    withdrawn = Withdrawn([Withdrawal(key, "b" * 64, None, 1, "now", "rows changed since export")])
    assert TableIndex([old, new], Withdrawn()).current(key) is new
    index = TableIndex([old, new], withdrawn)
    assert index.current(key) is old and index.taken_back == 1 and index.has(key, "b" * 64)


def test_validate_holds_one_tables_listing_at_a_time() -> None:
    pulled = 0

    class Store:
        def list(self, prefix: str) -> Iterator[ObjectInfo]:
            nonlocal pulled
            if prefix.startswith("_control"):
                return
            for t in range(50):
                for d in range(200):
                    pulled += 1
                    yield ObjectInfo(f"db/public.t{t:03d}/year=2026/month=01/day=01/part-{d:04d}.parquet", 1)

    for n, (ident, listing) in enumerate(tables(Store(), Scope(("",), (), ""))):  # type: ignore[arg-type]
        assert ident == ("db", "public", f"t{n:03d}") and len(listing.data) == 200
        assert pulled <= (n + 1) * 200 + 1  # the table, and at most the first key of the next one
    assert pulled == 50 * 200


# -- overlaps ----------------------------------------------------------------------------------
def span(key: str, lo: Any, hi: Any, rows: int = 3) -> Span:
    return Span("db", "public.t", key, lo, hi, rows, key, ("id",))


def test_only_objects_whose_ranges_chain_are_grouped() -> None:
    finder = OverlapFinder()
    finder.spans[("db", "public.t")] = [span("a", 1, 10), span("b", 11, 20), span("c", 15, 30), span("d", 30, 31),
                                        span("e", 40, 50)]
    assert [[s.key for s in g] for g in finder.groups()] == [["b", "c", "d"]]


def test_a_group_too_large_to_compare_is_noted_not_loaded() -> None:
    finder = OverlapFinder(max_group_rows=5)
    finder.spans[("db", "public.t")] = [span("a", 1, 10), span("b", 5, 20)]
    assert list(finder.groups()) == []
    assert "not compared" in finder.notes[0]


@pytest.mark.parametrize("keys", [
    {"a": pa.array([1, 2, 3]), "b": pa.array([3, 4, 5]), "c": pa.array([6, 7])},
    {"a": pa.array(["1", "2", "3"]), "b": pa.array([3, 4, 5]), "c": pa.array(["6", "7"])},  # JSONL keys are text
])
def test_shared_keys_name_each_pair_that_shares_keys(keys: dict[str, pa.Array]) -> None:
    group = [span("a", 1, 3), span("b", 3, 5), span("c", 6, 7)]
    found = shared_keys(group, lambda s: keys[s.key])
    assert [(p.type, p.key) for p in found] == [("overlapping_archives", "b")]
    assert "shares 1 primary keys (e.g. id=3) with a" in found[0].message


def test_objects_with_broken_integrity_are_not_compared() -> None:
    finder = OverlapFinder()
    bad = Checked("k", "db", "public.t", problems=[problem("checksum_mismatch", "k", "x")])
    finder.add(bad)
    assert finder.spans == {}


# -- timestamps to partition days ------------------------------------------------------------
@pytest.mark.parametrize("values", [
    pa.array([0, 86_399_999_999], pa.timestamp("us", tz="UTC")),
    pa.array([0, 86_399_999_999], pa.timestamp("us")),
    pa.array([0, 0], pa.date32()),
    pa.array(["1970-01-01 00:00:00+00", "1970-01-01 23:59:59.999999+00"]),
])
def test_every_timestamp_encoding_maps_to_its_utc_day(values: pa.Array) -> None:
    assert utc_days(values).tolist() == [0, 0]


# -- bounded worker map ------------------------------------------------------------------------
def test_bounded_map_keeps_at_most_window_items_in_flight() -> None:
    pulled = 0
    done = 0
    most = 0
    lock = threading.Lock()

    def items() -> Iterator[int]:
        nonlocal pulled, most
        for i in range(200):
            with lock:
                pulled += 1
                most = max(most, pulled - done)
            yield i

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = []
        for r in bounded_map(pool, lambda x: x * 2, items(), window=8):
            with lock:
                done += 1
            results.append(r)
    assert sorted(results) == [i * 2 for i in range(200)]
    assert most <= 8


def test_bounded_map_passes_a_worker_failure_on() -> None:
    def boom(x: int) -> int:
        if x == 3:
            raise RuntimeError("S3 went away")
        return x

    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(RuntimeError, match="S3 went away"):
        list(bounded_map(pool, boom, range(100), window=4))


# -- terminal progress -------------------------------------------------------------------------
def test_progress_rewrites_one_status_line_and_clears_it() -> None:
    out = io.StringIO()
    progress = Progress(out, every=0)
    for i in range(3):
        progress(Checked(f"k{i}", None, None, bytes=1024))
    progress.done()
    assert out.getvalue().split("\r")[1:] == ["validate: 1 objects, 1.0 KB checked", "validate: 2 objects, 2.0 KB checked",
                                              "validate: 3 objects, 3.0 KB checked", "\033[K"]


# -- report --------------------------------------------------------------------------------------
def test_every_problem_type_suggests_a_repair_and_unknown_types_are_refused() -> None:
    for kind in PROBLEM_TYPES:
        assert problem(kind, "k", "what happened").message.startswith("what happened: ")
    with pytest.raises(ValueError):
        Problem("bit_rot", "k", None, None, "x")


def test_report_json_document_and_text_lines() -> None:
    report = Report()
    report.summary.objects, report.summary.rows, report.summary.bytes, report.summary.seconds = 3, 30, 4096, 1.23456
    report.add(problem("orphaned_file", "x/y.txt", "stray file"))
    report.add(problem("checksum_mismatch", "a.parquet", "bad", database="db", table="public.t"))
    report.sort()
    doc = json.loads(report.to_json())
    assert doc == {"ok": False, "summary": {"objects": 3, "rows": 30, "bytes": 4096, "seconds": 1.235},
                   "problems": [{"type": "checksum_mismatch", "key": "a.parquet", "database": "db", "table": "public.t",
                                 "message": problem("checksum_mismatch", "a", "bad").message},
                                {"type": "orphaned_file", "key": "x/y.txt", "database": None, "table": None,
                                 "message": problem("orphaned_file", "a", "stray file").message}]}
    lines = report.text_lines()
    assert lines[0].startswith("checksum_mismatch: a.parquet [db public.t]: bad: ")
    assert lines[1].startswith("orphaned_file: x/y.txt: stray file: ")
    assert lines[2] == "summary: 3 objects, 30 rows, 4.0 KB checked in 1.2s: 2 problems found"
