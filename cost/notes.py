"""The per-class notes that explain an estimate: minimum billable sizes, per-object overheads,
Intelligent-Tiering's monitoring and tiers, minimum storage durations (early deletion), restores,
where the manifests are priced, and one-time costs that are deliberately left out of the totals.
The per-object notes speak of the archive objects only: the manifests are priced where they are."""
from __future__ import annotations

from collections.abc import Mapping

from cost.money import THOUSAND, money, size_text
from cost.population import Population
from cost.prices import ClassPrices
from cost.workload import DAYS_PER_MONTH, MANIFEST_CLASS, Workload


def class_notes(currency: str, storage_class: str, prices: ClassPrices, manifest_prices: ClassPrices,
                work: Workload, *, manifest_classes: Mapping[str, Population]) -> list[str]:
    """`manifest_prices`: MANIFEST_CLASS's; `manifest_classes`: the manifests stored now by the
    class they are priced in."""
    pop, whose = _sample(work)
    notes: list[str] = []
    if prices.needs_restore:
        notes.append("objects must be restored before anything can read them (restore, validate): "
                     f"{prices.retrieval_time}")
    notes += _minimum_size(prices, pop, whose)
    notes += _overhead(prices, pop, whose)
    notes += _intelligent_tiering(currency, prices, pop, whose)
    notes += _minimum_duration(currency, prices, work)
    notes += _manifests(manifest_classes, work)
    notes += _one_time(currency, storage_class, prices, manifest_prices, work)
    return notes


def _sample(work: Workload) -> tuple[Population, str]:
    """The objects the size notes speak about: those stored now, else one month of writes."""
    if work.stored.objects:
        return work.stored, "stored now"
    return work.monthly_writes, "written each month"


def _minimum_size(prices: ClassPrices, pop: Population, whose: str) -> list[str]:
    if not prices.min_object_kb or not pop.objects:
        return []
    small, _ = pop.split(prices.min_object_kb)
    if not small.objects:
        return []
    billed = pop.billable_gb(min_object_kb=prices.min_object_kb)
    return [f"{small.objects:,} of the {pop.objects:,} objects {whose} are under the {prices.min_object_kb} KB "
            f"minimum billable size and billed as {prices.min_object_kb} KB: {size_text(billed)} billed "
            f"for {size_text(pop.gb)} stored"]


def _overhead(prices: ClassPrices, pop: Population, whose: str) -> list[str]:
    total_kb = prices.overhead_kb + prices.overhead_standard_kb
    if not total_kb or not pop.objects:
        return []
    extra = pop.billable_gb(overhead_kb=total_kb) - pop.gb
    return [f"each object carries {total_kb} KB of index overhead ({prices.overhead_kb} KB at this class's rate, "
            f"{prices.overhead_standard_kb} KB at STANDARD's): +{size_text(extra)} for the "
            f"{pop.objects:,} objects {whose}"]


def _intelligent_tiering(currency: str, prices: ClassPrices, pop: Population, whose: str) -> list[str]:
    if not prices.access_tiers and not prices.monitoring_per_1000:
        return []
    notes = []
    unmonitored, monitored = pop.split(prices.monitoring_min_kb)
    if unmonitored.objects:
        notes.append(f"{unmonitored.objects:,} of the {pop.objects:,} objects {whose} are under "
                     f"{prices.monitoring_min_kb} KB: never monitored, always billed at the Frequent Access rate")
    if prices.monitoring_per_1000 and monitored.objects:
        fee = monitored.objects / THOUSAND * prices.monitoring_per_1000
        notes.append(f"monitoring fee {money(fee, currency)} a month for the {monitored.objects:,} "
                     f"monitored objects {whose}")
    steps = ", ".join(f"{t.name} from day {t.after_days}" for t in prices.access_tiers)
    notes.append(f"assumes archives are never read: Frequent Access for the first "
                 f"{prices.access_tiers[0].after_days if prices.access_tiers else 0} days, {steps} "
                 "(a read moves an object back to Frequent Access)")
    return notes


def _minimum_duration(currency: str, prices: ClassPrices, work: Workload) -> list[str]:
    days = prices.min_storage_days
    if not days:
        return []
    notes = [f"minimum storage duration {days} days: an object deleted or moved sooner is billed "
             f"for the remaining days"]
    kept = work.archive_retention_days
    if kept is None or kept >= days:
        return notes
    rate = prices.storage[0].usd_per_gb_month
    per_gb = rate * (days - kept) / DAYS_PER_MONTH
    head = f"early deletion: archives are kept {kept} days, under the {days}-day minimum"
    writes = work.monthly_writes.billable_gb(min_object_kb=prices.min_object_kb, overhead_kb=prices.overhead_kb)
    if writes:
        notes.append(f"{head}; the {size_text(writes)} written each month are billed {days - kept} days "
                     f"more, about {money(writes * per_gb, currency)} a month (not in the totals)")
    else:
        notes.append(f"{head}; each GB deleted then is still billed {money(per_gb, currency)} more "
                     "(not in the totals)")
    return notes


def _manifests(by_class: Mapping[str, Population], work: Workload) -> list[str]:
    """Which part of the estimate is the manifests, and the class they are priced in."""
    count = sum(p.objects for p in by_class.values())
    if not count and not work.monthly_manifests.objects:
        return []
    if set(by_class) <= {MANIFEST_CLASS}:
        pop = by_class.get(MANIFEST_CLASS, Population())
        note = (f"manifests ({pop.objects:,} objects, {size_text(pop.gb)}) priced as {MANIFEST_CLASS}, "
                "where the archiver keeps them")
    else:  # measured: some were moved out of STANDARD (a lifecycle rule, an older archiver)
        parts = ", ".join(f"{name} {p.objects:,} ({size_text(p.gb)})" for name, p in sorted(by_class.items()))
        note = f"manifests ({count:,} objects) priced in the class each is listed in: {parts}"
    if work.monthly_manifests.objects:
        note += f"; {work.monthly_manifests.objects:,} more a month, written to {MANIFEST_CLASS}"
    return [note]


def _one_time(currency: str, storage_class: str, prices: ClassPrices, manifest_prices: ClassPrices,
              work: Workload) -> list[str]:
    count = work.stored.objects
    if not count or work.current_class == storage_class:
        return []
    if work.current_class in (None, "LOCAL"):
        manifests = work.stored_manifests.objects
        cost = count / THOUSAND * prices.put_per_1000 + manifests / THOUSAND * manifest_prices.put_per_1000
        return [f"uploading the {count + manifests:,} objects stored at the start{_of_them(manifests)} costs "
                f"{money(cost, currency)} in PUT requests once (not in the totals)"]
    # Only the archive objects move: the manifests stay where the archiver put them (and S3
    # lifecycle rules by default leave objects under 128 KB where they are).
    if prices.transition_per_1000:
        cost = count / THOUSAND * prices.transition_per_1000
        return [f"moving the {count:,} objects now in {work.current_class} here by a lifecycle rule costs "
                f"{money(cost, currency)} once (not in the totals; their manifests stay in {MANIFEST_CLASS})"]
    cost = count / THOUSAND * prices.put_per_1000
    return [f"copying the {count:,} objects now in {work.current_class} here costs {money(cost, currency)} "
            "in PUT requests once, after a restore for Glacier classes (not in the totals; their manifests "
            f"stay in {MANIFEST_CLASS})"]


def _of_them(manifests: int) -> str:
    return f" ({manifests:,} of them manifests, to {MANIFEST_CLASS})" if manifests else ""
