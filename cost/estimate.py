"""What the archives cost per storage class: storage through the price tiers (with minimum billable
sizes, per-object overheads and Intelligent-Tiering's access tiers and monitoring fee), requests and
retrieval, month by month over the period. Pure functions of a Workload and a price table. The
archive objects are priced in the class asked for, their manifests in the class they are kept in
(STANDARD, where the archiver writes them; measured: as listed).

The model, stated once: month 1 bills the objects stored now; every month writes `monthly_writes`
(charged PUTs that month, stored from the next month on); nothing is deleted within the period.
Each month's storage and request lines are rounded to the cent, as on a bill, and the period total
is the sum of those months. A month is 30 days (for Intelligent-Tiering's 30/90-day tiers)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal

from cost.money import THOUSAND, cents, money
from cost.notes import class_notes
from cost.population import Population
from cost.prices import GB, KB, ClassPrices, PriceTable, load_prices
from cost.workload import DAYS_PER_MONTH, DEFAULT_MANIFEST_KB, DEFAULT_OBJECT_MB, MANIFEST_CLASS, Workload


@dataclass(frozen=True)
class Estimate:
    storage_class: str
    label: str
    retrieval_time: str
    monthly_storage: Decimal
    monthly_requests: Decimal
    period_total: Decimal
    notes: list[str]
    #: Period total of STANDARD minus this one's (positive: cheaper); None for STANDARD itself.
    saving: Decimal | None = None

    @property
    def monthly_total(self) -> Decimal:
        return self.monthly_storage + self.monthly_requests


@dataclass(frozen=True)
class Billed:
    """One cohort of objects as a class bills it, whatever month it is."""

    #: GB always billed through the class's tiers (for Intelligent-Tiering: too small to be monitored).
    fixed_gb: Decimal
    #: GB that moves down Intelligent-Tiering's access tiers with age (for other classes: tiered too).
    moving_gb: Decimal
    monitored_objects: int
    #: The Glacier classes' per-object overhead billed at STANDARD's rate.
    standard_gb: Decimal

    @classmethod
    def of(cls, prices: ClassPrices, pop: Population) -> Billed:
        unmonitored, monitorable = pop.split(prices.monitoring_min_kb)
        size = {"min_object_kb": prices.min_object_kb, "overhead_kb": prices.overhead_kb}
        return cls(fixed_gb=unmonitored.billable_gb(**size), moving_gb=monitorable.billable_gb(**size),
                   monitored_objects=monitorable.objects if prices.monitoring_per_1000 else 0,
                   standard_gb=Decimal(prices.overhead_standard_kb * KB * pop.objects) / GB)


@dataclass(frozen=True)
class Placed:
    """What one storage class holds of a workload: the objects stored now and each month's writes."""

    storage_class: str
    prices: ClassPrices
    stored: Billed
    writes: Billed


def placements(table: PriceTable, region: str, storage_class: str, work: Workload) -> list[Placed]:
    """The archive objects in `storage_class`; the manifests where they really are (see
    manifest_classes), which is a class of its own unless it is `storage_class` too."""
    pops: dict[str, tuple[Population, Population]] = {storage_class: (work.stored, work.monthly_writes)}
    for name, pop in manifest_classes(table, region, work).items():
        stored, writes = pops.get(name, (Population(), Population()))
        pops[name] = (stored + pop, writes)
    stored, writes = pops.get(MANIFEST_CLASS, (Population(), Population()))
    pops[MANIFEST_CLASS] = (stored, writes + work.monthly_manifests)
    out = []
    for name, (stored, writes) in pops.items():
        prices = table.class_prices(region, name)
        out.append(Placed(name, prices, Billed.of(prices, stored), Billed.of(prices, writes)))
    return out


def manifest_classes(table: PriceTable, region: str, work: Workload) -> dict[str, Population]:
    """The manifests stored now by the class they are priced in: the one they are listed in, unless
    the price table does not know it (LOCAL: in the fallback directory or local_dir, not uploaded
    yet), then MANIFEST_CLASS, where the archiver puts them."""
    known = table.classes(region)
    out: dict[str, Population] = {}
    for listed, pop in work.manifests.items():
        if pop.objects:
            name = listed if listed in known else MANIFEST_CLASS
            out[name] = out.get(name, Population()) + pop
    return out


def month_storage(placed: list[Placed], standard: ClassPrices, month: int) -> Decimal:
    """Storage cost of month `month` (0 = the first) over every class that holds part of the
    workload. A class's storage tiers count all its GB together (archives and manifests when both
    are STANDARD, and the Glacier classes' 8 KB per object billed at STANDARD's rate)."""
    tiered: dict[str, Decimal] = {}
    rates = {p.storage_class: p.prices for p in placed} | {"STANDARD": standard}
    flat = Decimal(0)
    for p in placed:
        gb, cost, standard_gb = class_month(p.prices, p.stored, p.writes, month)
        tiered[p.storage_class] = tiered.get(p.storage_class, Decimal(0)) + gb
        tiered["STANDARD"] = tiered.get("STANDARD", Decimal(0)) + standard_gb
        flat += cost
    return sum((rates[name].storage_cost(gb) for name, gb in tiered.items()), flat)


def class_month(prices: ClassPrices, stored: Billed, writes: Billed, month: int) -> tuple[Decimal, Decimal, Decimal]:
    """One class's month `month`: what is stored now, aged `month` months, plus `month` cohorts of
    monthly writes aged 0 .. month-1 months. Returns (GB billed through the class's tiers, cost
    billed flat: Intelligent-Tiering's access tiers and monitoring, GB billed at STANDARD's rate)."""
    tiered = stored.fixed_gb + month * writes.fixed_gb
    flat = Decimal(0)
    for rate, cohorts, pieces in ((prices.rate_for_age(month * DAYS_PER_MONTH), 1, stored),
                                  *((r, n, writes) for r, n in write_ages_by_rate(prices, month))):
        if rate is None:
            tiered += cohorts * pieces.moving_gb
        else:
            flat += cohorts * pieces.moving_gb * rate
    monitored = stored.monitored_objects + month * writes.monitored_objects
    return (tiered, flat + monitored / THOUSAND * prices.monitoring_per_1000,
            stored.standard_gb + month * writes.standard_gb)


def write_ages_by_rate(prices: ClassPrices, month: int) -> list[tuple[Decimal | None, int]]:
    """How many of the `month` write cohorts (ages 0 .. month-1 months) sit at each access-tier
    rate (None: still in the tiered rate). Counted, not looped, so long periods stay cheap."""
    def at_least(days: int) -> int:  # cohorts aged at least `days`: ages ceil(days / 30) .. month-1
        return max(0, month - math.ceil(days / DAYS_PER_MONTH))
    bounds = [t.after_days for t in prices.access_tiers]
    out: list[tuple[Decimal | None, int]] = [(None, month - (at_least(bounds[0]) if bounds else 0))]
    for i, tier in enumerate(prices.access_tiers):
        older = at_least(bounds[i + 1]) if i + 1 < len(bounds) else 0
        out.append((tier.usd_per_gb_month, at_least(tier.after_days) - older))
    return [(rate, n) for rate, n in out if n]


def month_requests(prices: ClassPrices, manifests: ClassPrices, work: Workload) -> Decimal:
    """PUTs of the objects written this month, plus the month's retrieval (the same every month).
    Manifests are written to and read from MANIFEST_CLASS (`manifests`), at its request prices."""
    puts = (work.monthly_writes.objects / THOUSAND * prices.put_per_1000
            + work.monthly_manifests.objects / THOUSAND * manifests.put_per_1000)
    reads = (work.retrieval_requests_per_month / THOUSAND * (prices.get_per_1000 + prices.restore_per_1000)
             + work.manifest_requests_per_month / THOUSAND * manifests.get_per_1000)
    return puts + reads + work.retrieval_gb_per_month * prices.retrieval_per_gb


def estimate_class(table: PriceTable, region: str, storage_class: str, work: Workload) -> Estimate:
    prices = table.class_prices(region, storage_class)
    standard = table.class_prices(region, "STANDARD")
    manifest_prices = table.class_prices(region, MANIFEST_CLASS)
    placed = placements(table, region, storage_class, work)
    storage = [cents(month_storage(placed, standard, m)) for m in range(work.months)]
    requests = cents(month_requests(prices, manifest_prices, work))
    return Estimate(storage_class=storage_class, label=prices.label, retrieval_time=prices.retrieval_time,
                    monthly_storage=storage[0], monthly_requests=requests,
                    period_total=sum(storage, Decimal(0)) + requests * work.months,
                    notes=class_notes(table.currency, storage_class, prices, manifest_prices, work,
                                      manifest_classes=manifest_classes(table, region, work)))


def estimate_all(table: PriceTable, region: str, work: Workload, *,
                 classes: list[str] | None = None) -> list[Estimate]:
    """Estimates for `classes` (default: every class of the region), cheapest period total first,
    each non-STANDARD one with a note on its saving against STANDARD."""
    names = classes if classes is not None else list(table.classes(region))
    baseline = estimate_class(table, region, "STANDARD", work)
    out = []
    for name in names:
        if name == "STANDARD":
            out.append(baseline)
            continue
        est = estimate_class(table, region, name, work)
        out.append(replace(est, saving=baseline.period_total - est.period_total,
                           notes=[*est.notes, saving_note(table.currency, est, baseline, work.months)]))
    # Stable on ties: the price table's order (roughly most to least accessible) breaks them.
    return sorted(out, key=lambda e: (e.period_total, e.monthly_total))


def saving_note(currency: str, est: Estimate, baseline: Estimate, months: int) -> str:
    diff = baseline.period_total - est.period_total
    pct = f" ({diff / baseline.period_total * 100:.0f}%)" if baseline.period_total else ""
    span = f"over {months} month{'s' if months != 1 else ''}"
    if diff > 0:
        return f"saves {money(diff, currency)}{pct} {span} against STANDARD"
    if diff < 0:
        return f"costs {money(-diff, currency)} more {span} than STANDARD"
    return f"costs the same as STANDARD {span}"


def uniform_workload(size_gb: Decimal, *, avg_object_mb: Decimal = DEFAULT_OBJECT_MB,
                     manifest_kb: Decimal = DEFAULT_MANIFEST_KB, months: int = 12) -> Workload:
    """`size_gb` of archives in objects of `avg_object_mb`, each with its manifest, nothing else."""
    objects = archive_objects(size_gb, avg_object_mb)
    manifests = Population.uniform(manifest_kb * KB * objects, objects)
    return Workload(stored=Population.uniform(size_gb * GB, objects), manifests={MANIFEST_CLASS: manifests},
                    months=months)


def archive_objects(size_gb: Decimal, avg_object_mb: Decimal) -> int:
    """Objects needed for size_gb at avg_object_mb each (a partial object is still an object)."""
    if size_gb <= 0:
        return 0
    return int((size_gb * 1024 / avg_object_mb).to_integral_value(rounding=ROUND_CEILING))


def monthly_cost_by_class(size_gb: Decimal, region: str = "us-east-1", *,
                          avg_object_mb: Decimal = DEFAULT_OBJECT_MB,
                          prices: PriceTable | None = None) -> dict[str, Decimal]:
    """For the wizard: first-month total per storage class (to the cent) of `size_gb` archived
    now, exactly what `cost.main --size-gb SIZE --region REGION --compare` shows as Total/month.
    Raises UsageError for an unknown region."""
    table = prices or load_prices()
    work = uniform_workload(Decimal(size_gb), avg_object_mb=avg_object_mb)
    return {e.storage_class: e.monthly_total for e in estimate_all(table, region, work)}
