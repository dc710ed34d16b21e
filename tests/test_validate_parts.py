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

from common.storage import ObjectInfo
from validate.app import Progress
from validate.checks import bounded_map
from validate.inventory import Entry, pair_listing
from validate.objects import Checked, utc_days
from validate.overlap import OverlapFinder, Span, shared_keys
from validate.report import PROBLEM_TYPES, Problem, Report, problem

M = ".manifest.json"


def infos(*keys: str) -> list[ObjectInfo]:
    return [ObjectInfo(k, 10) for k in keys]


def pairs(entries: list[Entry]) -> set[tuple[str, bool, bool]]:
    return {(e.key, e.data is not None, e.manifest is not None) for e in entries}


def no_head(_key: str) -> ObjectInfo | None:
    return None


# -- pairing -----------------------------------------------------------------------------------
def test_sorted_listing_pairs_objects_with_their_manifests() -> None:
    listing = infos("a.parquet", "a.parquet-copy", "a.parquet-copy" + M, "a.parquet" + M, "b.parquet", "c.parquet" + M, "d.txt")
    entries = list(pair_listing(sorted(listing, key=lambda o: o.key), head=no_head))
    assert pairs(entries) == {("a.parquet", True, True), ("a.parquet-copy", True, True), ("b.parquet", True, False),
                              ("c.parquet", False, True), ("d.txt", True, False)}


def test_out_of_order_listing_is_confirmed_with_head_not_reported_twice() -> None:
    listing = infos("z.parquet" + M, "a.parquet", "z.parquet", "a.parquet" + M)
    present = {o.key: o for o in listing}
    asked: list[str] = []

    def head(key: str) -> ObjectInfo | None:
        asked.append(key)
        return present.get(key)

    entries = list(pair_listing(listing, head=head))
    assert sorted(pairs(entries)) == [("a.parquet", True, True), ("z.parquet", True, True)]
    assert len(entries) == 2
    assert asked == ["z.parquet", "a.parquet" + M]  # one look-up per out-of-order key


def hidden(key: str) -> str:
    folder, _, name = key.rpartition("/")
    return f"{folder}/_{name}{M}" if folder else f"_{name}{M}"


def test_hidden_sidecars_pair_with_the_objects_listed_after_them() -> None:
    keys = [f"d/day=01/{n}" for n in ("a.parquet", "b.parquet", "c.parquet")]
    listing = infos(hidden(keys[0]), hidden(keys[2]), keys[0], keys[1], keys[2], hidden("d/day=01/z.parquet"))
    entries = list(pair_listing(sorted(listing, key=lambda o: o.key), head=no_head))
    assert pairs(entries) == {(keys[0], True, True), (keys[1], True, False), (keys[2], True, True),
                              ("d/day=01/z.parquet", False, True)}
    assert len(entries) == 4
    assert {e.manifest_key for e in entries if e.key == keys[0]} == {hidden(keys[0])}


def test_a_legacy_manifest_left_beside_its_hidden_copy_counts_once() -> None:
    key = "d/day=01/a.parquet"
    entries = list(pair_listing(sorted(infos(hidden(key), key, key + M), key=lambda o: o.key), head=no_head))
    assert [(e.key, e.manifest.key if e.manifest else None) for e in entries] == [(key, hidden(key))]


def test_both_layouts_in_one_folder_pair_each_object_once() -> None:
    old, new = "d/day=01/a.parquet", "d/day=01/b.parquet"
    entries = list(pair_listing(sorted(infos(old, old + M, hidden(new), new), key=lambda o: o.key), head=no_head))
    assert sorted((e.key, e.manifest_key) for e in entries) == [(old, old + M), (new, hidden(new))]


def test_a_hidden_manifest_listed_out_of_order_is_confirmed_with_head() -> None:
    key = "d/day=01/a.parquet"
    present = {key: ObjectInfo(key, 10)}
    asked: list[str] = []

    def head(k: str) -> ObjectInfo | None:
        asked.append(k)
        return present.get(k)

    entries = list(pair_listing(infos("d/day=01/0.txt", hidden(key), "d/day=01/zz.txt"), head=head))
    assert (key, True, True) in pairs(entries) and asked.count(key) == 1
    assert len([e for e in entries if e.key == key]) == 1


def test_pairing_streams_without_holding_the_listing() -> None:
    pulled = 0
    most_waiting = 0

    def listing() -> Iterator[ObjectInfo]:
        nonlocal pulled
        for i in range(20_000):
            key = f"db/public.t/year=2020/month=01/day=01/part-{i:06d}.parquet"
            for k in (key, key + M):
                pulled += 1
                yield ObjectInfo(k, 1)

    emitted = 0
    for _entry in pair_listing(listing(), head=no_head):
        emitted += 2
        most_waiting = max(most_waiting, pulled - emitted)
    assert emitted == 40_000
    assert most_waiting <= 2


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
