"""What the archives cost per storage class: storage through the price tiers (with minimum billable
sizes, per-object overheads and Intelligent-Tiering's access tiers and monitoring fee), requests and
retrieval, month by month over the period. Pure functions of a Workload and a price table.

The model, stated once: month 1 bills the objects stored now; every month writes `monthly_writes`
(charged PUTs that month, stored from the next month on); nothing is deleted within the period.
Each month's storage and request lines are rounded to the cent, as on a bill, and the period total
is the sum of those months. A month is 30 days (for Intelligent-Tiering's 30/90-day tiers)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, Decimal

from cost.money import THOUSAND, cents, money
from cost.notes import class_notes
from cost.population import Population
from cost.prices import GB, KB, ClassPrices, PriceTable, load_prices
from cost.workload import DAYS_PER_MONTH, DEFAULT_MANIFEST_KB, DEFAULT_OBJECT_MB, Workload


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


def month_storage(prices: ClassPrices, standard: ClassPrices, cohorts: list[tuple[Population, int]]) -> Decimal:
    """Storage cost of one month for cohorts of (objects, age in days) all in this class."""
    tiered_gb = Decimal(0)   # billed through the class's tiers (Frequent Access for Intelligent-Tiering)
    flat = Decimal(0)        # Intelligent-Tiering objects that moved to a cheaper access tier
    monitored = 0
    overhead_std_gb = Decimal(0)
    for pop, age_days in cohorts:
        unmonitored, monitorable = pop.split(prices.monitoring_min_kb)
        rate = prices.rate_for_age(age_days)
        moving = monitorable.billable_gb(min_object_kb=prices.min_object_kb, overhead_kb=prices.overhead_kb)
        tiered_gb += unmonitored.billable_gb(min_object_kb=prices.min_object_kb, overhead_kb=prices.overhead_kb)
        if rate is None:
            tiered_gb += moving
        else:
            flat += moving * rate
        if prices.monitoring_per_1000:
            monitored += monitorable.objects
        overhead_std_gb += Decimal(prices.overhead_standard_kb * KB * pop.objects) / GB
    return (prices.storage_cost(tiered_gb) + flat + monitored / THOUSAND * prices.monitoring_per_1000
            + standard.storage_cost(overhead_std_gb))


def month_requests(prices: ClassPrices, work: Workload) -> Decimal:
    """PUTs of the objects written this month, plus the month's retrieval."""
    puts = work.monthly_writes.objects / THOUSAND * prices.put_per_1000
    reads = work.retrieval_requests_per_month / THOUSAND * (prices.get_per_1000 + prices.restore_per_1000)
    return puts + reads + work.retrieval_gb_per_month * prices.retrieval_per_gb


def cohorts_in_month(work: Workload, month: int) -> list[tuple[Population, int]]:
    """Month 0 bills what is stored now; month k also bills the k months of writes before it."""
    cohorts = [(work.stored, month * DAYS_PER_MONTH)]
    cohorts += [(work.monthly_writes, age * DAYS_PER_MONTH) for age in range(month)]
    return [(pop, age) for pop, age in cohorts if pop.objects]


def estimate_class(table: PriceTable, region: str, storage_class: str, work: Workload) -> Estimate:
    prices = table.class_prices(region, storage_class)
    standard = table.class_prices(region, "STANDARD")
    months = []
    for month in range(work.months):
        storage = cents(month_storage(prices, standard, cohorts_in_month(work, month)))
        months.append((storage, cents(month_requests(prices, work))))
    return Estimate(storage_class=storage_class, label=prices.label, retrieval_time=prices.retrieval_time,
                    monthly_storage=months[0][0], monthly_requests=months[0][1],
                    period_total=sum((s + r for s, r in months), Decimal(0)),
                    notes=class_notes(table.currency, storage_class, prices, standard, work))


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
    stored = Population.uniform(size_gb * GB, objects) + Population.uniform(manifest_kb * KB * objects, objects)
    return Workload(stored=stored, months=months)


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
