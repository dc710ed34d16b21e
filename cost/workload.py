"""What is stored and what happens to it each month: the input of every estimate."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from cost.population import Population

#: A month is 30 days (Intelligent-Tiering's 30/90-day tiers, minimum storage durations).
DAYS_PER_MONTH = 30
#: Assumed size of an archive object when neither --objects, --avg-object-mb nor a measurement says.
DEFAULT_OBJECT_MB = Decimal(4)
#: Assumed size of the manifest sidecar the archiver writes next to every archive object.
DEFAULT_MANIFEST_KB = Decimal("2.5")


@dataclass(frozen=True)
class Workload:
    #: Objects stored at the start of the period (archive objects and their manifests).
    stored: Population
    #: Objects written every month (the growth, with manifests).
    monthly_writes: Population = field(default_factory=Population)
    months: int = 12
    retrieval_gb_per_month: Decimal = Decimal(0)
    #: GET (and, for Glacier classes, restore) requests that retrieval takes per month.
    retrieval_requests_per_month: int = 0
    #: Days archives stay before they are deleted; None = kept beyond the period.
    archive_retention_days: int | None = None
    #: Storage class the stored objects are in now (for the one-time move note); None = not stored yet.
    current_class: str | None = None


