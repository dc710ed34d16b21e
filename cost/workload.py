"""What is stored and what happens to it each month: the input of every estimate."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from cost.population import Population

#: A month is 30 days (Intelligent-Tiering's 30/90-day tiers, minimum storage durations).
DAYS_PER_MONTH = 30
#: Assumed size of an archive object when neither --objects, --avg-object-mb nor a measurement says.
DEFAULT_OBJECT_MB = Decimal(4)
#: Assumed size of an archive object's manifest. The archiver stores them in manifest sets of up to
#: 8 (common/archive/manifest_sets.py); the estimate prices each as an object and a PUT of its own, an upper
#: bound that errs on the side of the bill.
DEFAULT_MANIFEST_KB = Decimal("2.5")
#: Where the archiver writes every manifest whatever s3.storage_class is (common/archive/storage.py
#: S3Storage.put): readable without a restore, and not billed at the IA classes' 128 KB minimum.
MANIFEST_CLASS = "STANDARD"


@dataclass(frozen=True)
class Workload:
    #: Objects stored at the start of the period in the class being priced: archive objects (and
    #: any other objects found under the prefix). Their manifests are in `manifests`.
    stored: Population
    #: Archive objects written every month (the growth); their manifests are in `monthly_manifests`.
    monthly_writes: Population = field(default_factory=Population)
    #: Manifests stored at the start, by the class they are in whichever class the archives are
    #: priced in: MANIFEST_CLASS, or as the bucket lists them when measured.
    manifests: Mapping[str, Population] = field(default_factory=dict)
    #: Manifests written every month, one per archive object written (priced as an object each: see
    #: DEFAULT_MANIFEST_KB), all to MANIFEST_CLASS.
    monthly_manifests: Population = field(default_factory=Population)
    months: int = 12
    retrieval_gb_per_month: Decimal = Decimal(0)
    #: GET (and, for Glacier classes, restore) requests of archive objects that retrieval takes per month.
    retrieval_requests_per_month: int = 0
    #: GETs of their manifests per month (priced as MANIFEST_CLASS's, where the archiver keeps them).
    manifest_requests_per_month: int = 0
    #: Days archives stay before they are deleted; None = kept beyond the period.
    archive_retention_days: int | None = None
    #: Storage class the stored objects are in now (for the one-time move note); None = not stored yet.
    current_class: str | None = None

    @property
    def stored_manifests(self) -> Population:
        """Every manifest stored at the start, whatever its class."""
        out = Population()
        for pop in self.manifests.values():
            out += pop
        return out
