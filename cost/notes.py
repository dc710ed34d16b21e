"""The per-class notes that explain an estimate: minimum billable sizes, per-object overheads,
Intelligent-Tiering's monitoring and tiers, minimum storage durations (early deletion), restores,
and one-time costs that are deliberately left out of the totals."""
from __future__ import annotations

from cost.money import THOUSAND, money, size_text
from cost.population import Population
from cost.prices import ClassPrices
from cost.workload import DAYS_PER_MONTH, Workload


def class_notes(currency: str, storage_class: str, prices: ClassPrices, standard: ClassPrices,
                work: Workload) -> list[str]:
    pop, whose = _sample(work)
    notes: list[str] = []
    if prices.needs_restore:
        notes.append("objects must be restored before anything can read them (restore, validate): "
                     f"{prices.retrieval_time}")
    notes += _minimum_size(prices, pop, whose)
    notes += _overhead(prices, pop, whose)
    notes += _intelligent_tiering(currency, prices, pop, whose)
    notes += _minimum_duration(currency, prices, work)
    notes += _one_time(currency, storage_class, prices, work)
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


def _one_time(currency: str, storage_class: str, prices: ClassPrices, work: Workload) -> list[str]:
    count = work.stored.objects
    if not count or work.current_class == storage_class:
        return []
    if work.current_class in (None, "LOCAL"):
        cost = count / THOUSAND * prices.put_per_1000
        return [f"uploading the {count:,} objects stored at the start costs {money(cost, currency)} "
                "in PUT requests once (not in the totals)"]
    if prices.transition_per_1000:
        cost = count / THOUSAND * prices.transition_per_1000
        return [f"moving the {count:,} objects now in {work.current_class} here by a lifecycle rule costs "
                f"{money(cost, currency)} once (not in the totals)"]
    cost = count / THOUSAND * prices.put_per_1000
    return [f"copying the {count:,} objects now in {work.current_class} here costs {money(cost, currency)} "
            "in PUT requests once, after a restore for Glacier classes (not in the totals)"]
