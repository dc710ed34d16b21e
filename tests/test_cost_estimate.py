"""The cost model against hand-computed bills (built-in us-east-1 prices). Every expectation is
worked out in the test from the published rates, so a wrong tier, threshold or rounding shows."""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from cost.estimate import Workload, estimate_all, estimate_class, monthly_cost_by_class
from cost.population import Population
from cost.prices import GB, KB, PriceTable, load_prices

MB = 1024 * KB
REGION = "us-east-1"


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return load_prices()


def objects(count: int, size_bytes: int | D) -> Population:
    return Population.uniform(D(size_bytes) * count, count)


@pytest.mark.parametrize(("size_gb", "expected"), [
    (D(500), D("11.50")),                 # 500 * 0.023
    (D(51200), D("1177.60")),             # exactly 50 TB: 51,200 * 0.023, all in the first tier
    (D(51300), D("1179.80")),             # 51,200 * 0.023 + 100 * 0.022 = 1,177.60 + 2.20
    (D(600000), D("13163.20")),           # 1,177.60 + 460,800 * 0.022 (10,137.60) + 88,000 * 0.021 (1,848.00)
])
def test_standard_storage_follows_the_50_tb_and_500_tb_tiers(prices, size_gb, expected):
    # One object per GB: far above every per-object threshold, so only the tiers matter.
    work = Workload(stored=objects(int(size_gb), GB), months=1)
    est = estimate_class(prices, REGION, "STANDARD", work)
    assert est.monthly_storage == expected
    assert est.period_total == expected


def test_growth_across_the_50_tb_edge_switches_rate_mid_period(prices):
    work = Workload(stored=objects(51_100, GB), monthly_writes=objects(100, GB), months=3)
    est = estimate_class(prices, REGION, "STANDARD", work)
    # Month 1: 51,100 * 0.023 = 1,175.30; month 2: 51,200 * 0.023 = 1,177.60;
    # month 3: 51,200 * 0.023 + 100 * 0.022 = 1,179.80. PUTs: 100 objects * 0.005 / 1,000 = 0.0005 -> 0.00
    assert est.period_total == D("1175.30") + D("1177.60") + D("1179.80")


def test_tier_edge_costs_the_lower_rate_only_above_it(prices):
    standard = prices.class_prices(REGION, "STANDARD")
    # The GB from 51,200 to 51,201 is billed at 0.022, not 0.023; those below stay at 0.023.
    assert standard.storage_cost(D(51201)) - standard.storage_cost(D(51200)) == D("0.022")
    assert standard.storage_cost(D(51200)) - standard.storage_cost(D(51199)) == D("0.023")


@pytest.mark.parametrize(("storage_class", "expected"), [
    ("STANDARD", D("23.00")),             # 1,000 * 0.023
    ("STANDARD_IA", D("12.50")),          # 1,000 * 0.0125
    ("ONEZONE_IA", D("10.00")),           # 1,000 * 0.01
    ("GLACIER_IR", D("4.00")),            # 1,000 * 0.004
    # 128,000 objects * 32 KB = 3.90625 GB overhead at 0.0036, and * 8 KB = 0.9765625 GB at 0.023:
    # (1,000 + 3.90625) * 0.0036 = 3.6140625; 0.9765625 * 0.023 = 0.0224609375; sum 3.6365... -> 3.64
    ("GLACIER", D("3.64")),
    # (1,000 + 3.90625) * 0.00099 = 0.9938671875; + 0.0224609375 = 1.016328125 -> 1.02
    ("DEEP_ARCHIVE", D("1.02")),
    # First month all in Frequent Access: 1,000 * 0.023 = 23.00, + 128 thousand objects * 0.0025 = 0.32
    ("INTELLIGENT_TIERING", D("23.32")),
])
def test_each_class_for_1000_gb_in_8_mb_objects(prices, storage_class, expected):
    work = Workload(stored=objects(128_000, 8 * MB), months=1)  # 128,000 * 8 MB = 1,000 GB
    assert estimate_class(prices, REGION, storage_class, work).monthly_storage == expected


# A million 50 KB objects: 50,000,000 KB = 47.6837158203125 GB actually stored.
SMALL = 1_000_000


@pytest.mark.parametrize(("storage_class", "expected"), [
    ("STANDARD", D("1.10")),              # 47.6837158203125 * 0.023 = 1.0967...
    # Billed as 128 KB each: 128,000,000 KB = 122.0703125 GB * 0.0125 = 1.5258... (not 47.68 * 0.0125 = 0.60)
    ("STANDARD_IA", D("1.53")),
    ("ONEZONE_IA", D("1.22")),            # 122.0703125 * 0.01 = 1.2207...
    ("GLACIER_IR", D("0.49")),            # 122.0703125 * 0.004 = 0.48828125
    # (47.6837158203125 + 30.517578125 GB of 32 KB overhead) * 0.0036 = 0.28152...
    # + 7.62939453125 GB of 8 KB overhead * 0.023 = 0.17547... -> 0.45700... -> 0.46
    ("GLACIER", D("0.46")),
    # 78.2012939453125 * 0.00099 = 0.07741... + 0.17547... = 0.25289... -> 0.25
    ("DEEP_ARCHIVE", D("0.25")),
    # Under 128 KB: never monitored (no fee), always Frequent Access: same as STANDARD
    ("INTELLIGENT_TIERING", D("1.10")),
])
def test_many_small_objects_pay_the_minimum_size_and_overhead(prices, storage_class, expected):
    work = Workload(stored=objects(SMALL, 50 * KB), months=1)
    assert estimate_class(prices, REGION, storage_class, work).monthly_storage == expected


def test_small_objects_make_standard_ia_dearer_than_standard(prices):
    work = Workload(stored=objects(SMALL, 50 * KB), months=1)
    ia = estimate_class(prices, REGION, "STANDARD_IA", work)
    standard = estimate_class(prices, REGION, "STANDARD", work)
    assert ia.monthly_total > standard.monthly_total
    assert any("1,000,000 of the 1,000,000 objects stored now are under the 128 KB minimum" in n for n in ia.notes)


def test_glacier_overhead_is_explained_in_a_note(prices):
    est = estimate_class(prices, REGION, "GLACIER", Workload(stored=objects(SMALL, 50 * KB)))
    # 1,000,000 * 40 KB = 40,000,000 KB = 38.15 GB
    assert any("40 KB of index overhead" in n and "+38.15 GB" in n for n in est.notes)


def test_intelligent_tiering_moves_unread_objects_down_over_the_months(prices):
    work = Workload(stored=objects(128_000, 8 * MB), months=12)  # 1,000 GB
    est = estimate_class(prices, REGION, "INTELLIGENT_TIERING", work)
    # Month 1 (age 0): Frequent 23.00 + monitoring 0.32 = 23.32
    # Months 2-3 (age 30, 60 days): Infrequent 1,000 * 0.0125 = 12.50 + 0.32 = 12.82 each
    # Months 4-12 (age 90+ days): Archive Instant 1,000 * 0.004 = 4.00 + 0.32 = 4.32 each, 9 months
    assert est.monthly_total == D("23.32")
    assert est.period_total == D("23.32") + 2 * D("12.82") + 9 * D("4.32")  # 87.84


def test_intelligent_tiering_ages_each_month_of_writes_separately(prices):
    work = Workload(stored=Population(), monthly_writes=objects(128_000, 8 * MB), months=5)  # 1,000 GB a month
    est = estimate_class(prices, REGION, "INTELLIGENT_TIERING", work)
    # Month 1: nothing stored yet.                                     storage 0.00
    # Month 2: one cohort aged 0 days: 23.00 + monitoring 0.32        = 23.32
    # Month 3: aged 30 (12.50) and 0 (23.00), + 2 * 0.32               = 36.14
    # Month 4: aged 60, 30 (2 * 12.50) and 0 (23.00), + 3 * 0.32       = 48.96
    # Month 5: aged 90 (4.00), 60, 30 (25.00), 0 (23.00), + 4 * 0.32   = 53.28
    # PUTs every month: 128 thousand * 0.005 = 0.64
    assert (est.monthly_storage, est.monthly_requests) == (D("0.00"), D("0.64"))
    assert est.period_total == D("23.32") + D("36.14") + D("48.96") + D("53.28") + 5 * D("0.64")  # 164.90


def test_growth_is_stored_from_the_month_after_it_is_written(prices):
    work = Workload(stored=objects(100, GB), monthly_writes=objects(10_240, MB), months=3)
    est = estimate_class(prices, REGION, "STANDARD", work)
    # Each month writes 10 GB in 10,240 objects: 10.24 thousand PUTs * 0.005 = 0.0512 -> 0.05
    # Storage: month 1 = 100 GB * 0.023 = 2.30; month 2 = 110 GB = 2.53; month 3 = 120 GB = 2.76
    assert (est.monthly_storage, est.monthly_requests) == (D("2.30"), D("0.05"))
    assert est.period_total == D("2.30") + D("2.53") + D("2.76") + 3 * D("0.05")  # 7.74


@pytest.mark.parametrize(("storage_class", "expected"), [
    ("STANDARD", D("0.01")),              # 20 thousand GETs * 0.0004 = 0.008
    ("STANDARD_IA", D("0.12")),           # 10 GB * 0.01 = 0.10 + 20 * 0.001 = 0.02
    ("GLACIER_IR", D("0.50")),            # 10 GB * 0.03 = 0.30 + 20 * 0.01 = 0.20
    ("GLACIER", D("1.11")),               # 10 GB * 0.01 = 0.10 + 20 * (0.0004 GET + 0.05 restore) = 1.008
    ("DEEP_ARCHIVE", D("2.21")),          # 10 GB * 0.02 = 0.20 + 20 * (0.0004 + 0.10) = 2.008
    ("INTELLIGENT_TIERING", D("0.01")),   # no retrieval fee; 20 * 0.0004 = 0.008
])
def test_retrieval_charges_per_gb_and_per_request(prices, storage_class, expected):
    work = Workload(stored=objects(100, GB), retrieval_gb_per_month=D(10), retrieval_requests_per_month=20_000,
                    months=1)
    assert estimate_class(prices, REGION, storage_class, work).monthly_requests == expected


def test_each_month_is_rounded_to_the_cent_like_a_bill(prices):
    est = estimate_class(prices, REGION, "STANDARD", Workload(stored=objects(1, GB), months=12))
    # 1 GB * 0.023 = 0.023 -> 0.02 a month; twelve bills of 0.02 = 0.24 (not 12 * 0.023 = 0.276 -> 0.28)
    assert est.monthly_total == D("0.02")
    assert est.period_total == D("0.24")


def test_early_deletion_is_noted_when_archives_are_kept_less_than_the_minimum(prices):
    work = Workload(stored=objects(100, GB), monthly_writes=objects(10, GB), archive_retention_days=30)
    notes = estimate_class(prices, REGION, "GLACIER_IR", work).notes
    # 10 GB written a month, billed 90 - 30 = 60 days more: 10 * 0.004 * 60 / 30 = 0.08
    assert any("kept 30 days, under the 90-day minimum" in n and "about $0.08 a month" in n for n in notes)


@pytest.mark.parametrize(("storage_class", "kept"), [("GLACIER_IR", 90), ("STANDARD_IA", 30), ("STANDARD", 1)])
def test_no_early_deletion_note_when_archives_outlive_the_minimum(prices, storage_class, kept):
    work = Workload(stored=objects(100, GB), monthly_writes=objects(10, GB), archive_retention_days=kept)
    assert not any("early deletion" in n for n in estimate_class(prices, REGION, storage_class, work).notes)


def test_comparison_is_cheapest_first_with_savings_against_standard(prices):
    work = Workload(stored=objects(128_000, 8 * MB), months=12)
    estimates = estimate_all(prices, REGION, work)
    totals = [e.period_total for e in estimates]
    assert totals == sorted(totals)
    assert {e.storage_class for e in estimates} == set(prices.classes(REGION))
    standard = next(e for e in estimates if e.storage_class == "STANDARD")
    assert standard.period_total == 12 * D("23.00") and standard.saving is None
    ia = next(e for e in estimates if e.storage_class == "STANDARD_IA")
    # 12 * 23.00 - 12 * 12.50 = 126.00, 126 / 276 = 46%
    assert ia.saving == D("126.00")
    assert "saves $126.00 (46%) over 12 months against STANDARD" in ia.notes


def test_monthly_cost_by_class_for_the_wizard(prices):
    costs = monthly_cost_by_class(D(500), REGION)
    assert set(costs) == set(prices.classes(REGION))
    # 500 GB in 4 MB objects = 128,000 objects, each with a 2.5 KB manifest (0.30517578125 GB in all):
    # STANDARD (500 + 0.30517578125) * 0.023 = 11.5070... -> 11.51
    assert costs["STANDARD"] == D("11.51")
    # The archives in STANDARD_IA: 500 * 0.0125 = 6.25; the manifests stay in STANDARD (no 128 KB
    # minimum): 0.30517578125 * 0.023 = 0.00701904296875; 6.25701904296875 -> 6.26
    assert costs["STANDARD_IA"] == D("6.26")
    assert all(v == v.quantize(D("0.01")) for v in costs.values())


def test_population_keeps_small_sizes_exact_and_groups_large_ones():
    pop = Population.from_sizes([100, 100, 200, 2 * MB, 4 * MB])
    assert pop.objects == 5 and pop.bytes == 400 + 6 * MB
    # Floor at 128 KB: 3 small objects * 128 KB + the two large ones as they are
    assert pop.billable_gb(min_object_kb=128) * GB == 3 * 128 * KB + 6 * MB
    small, large = pop.split(128)
    assert (small.objects, large.objects) == (3, 2)
