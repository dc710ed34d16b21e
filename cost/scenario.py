"""Turns the command line (and, with --config, the measurement) into a Workload, and records where
every figure came from: given on the command line, measured, read from the config, or assumed."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cost.estimate import archive_objects
from cost.population import Population
from cost.prices import GB, KB
from cost.workload import DAYS_PER_MONTH, DEFAULT_MANIFEST_KB, DEFAULT_OBJECT_MB, MANIFEST_CLASS, Workload
from common.errors import UsageError

if TYPE_CHECKING:
    from common.config import Config
    from cost.measure import Measurement

#: A shorter archived span says too little about the monthly growth to project it.
MIN_GROWTH_SPAN_DAYS = 28


@dataclass(frozen=True)
class Request:
    """The parsed, validated command line."""

    size_gb: Decimal | None = None
    storage_class: str | None = None
    region: str | None = None
    months: int = 12
    growth_gb_per_month: Decimal | None = None
    objects: int | None = None
    avg_object_mb: Decimal | None = None
    retrieval_gb_per_month: Decimal = Decimal(0)
    archive_retention_days: int | None = None


@dataclass
class Scenario:
    workload: Workload
    region: str
    storage_class: str
    #: Figure name -> value, and figure name -> "given" | "measured" | "config" | "derived" (worked out
    #: from other figures) | "assumed" | "default".
    inputs: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, value: Any, source: str) -> None:
        self.inputs[name] = value
        self.sources[name] = source


def pick_region_class(req: Request, cfg: Config | None) -> tuple[str, str]:
    """Region and storage class: the command line's, else the config's, else the defaults."""
    return (_pick(req.region, cfg.s3.region if cfg else None, "us-east-1")[0],
            _pick(req.storage_class, cfg.s3.storage_class.upper() if cfg else None, "STANDARD")[0])


def build(req: Request, *, cfg: Config | None = None, measured: Measurement | None = None) -> Scenario:
    region, region_src = _pick(req.region, cfg.s3.region if cfg else None, "us-east-1")
    klass, class_src = _pick(req.storage_class, cfg.s3.storage_class.upper() if cfg else None, "STANDARD")
    sc = Scenario(workload=Workload(stored=Population()), region=region, storage_class=klass)
    sc.put("region", region, region_src)
    sc.put("storage_class", klass, class_src)
    size_gb = _size(req, measured, sc)
    avg_mb, count = _object_size(req, measured, size_gb, sc)
    manifest_kb = _manifest_size(measured, sc)
    growth = _growth(req, measured, sc)
    sc.put("retrieval_gb_per_month", req.retrieval_gb_per_month, "given" if req.retrieval_gb_per_month else "default")
    sc.put("months", req.months, "given" if req.months != 12 else "default")
    sc.put("archive_retention_days", req.archive_retention_days,
           "given" if req.archive_retention_days is not None else "default")
    exact = measured is not None and sc.sources["size_gb"] == "measured" and sc.sources["objects"] == "measured"
    growth_objects = archive_objects(growth, avg_mb)
    read_objects = archive_objects(req.retrieval_gb_per_month, avg_mb)
    if exact and measured:  # the objects found, each manifest in the class it is listed in
        stored = Population.from_sizes(measured.sizes)
        manifests = {c: Population.from_sizes(sizes) for c, sizes in measured.manifest_sizes.items()}
    else:
        stored, manifests = Population.uniform(size_gb * GB, count), {MANIFEST_CLASS: _manifests(count, manifest_kb)}
    sc.workload = Workload(
        stored=stored,
        monthly_writes=Population.uniform(growth * GB, growth_objects),
        manifests=manifests,
        monthly_manifests=_manifests(growth_objects, manifest_kb),
        months=req.months,
        retrieval_gb_per_month=req.retrieval_gb_per_month,
        retrieval_requests_per_month=read_objects,
        manifest_requests_per_month=read_objects,  # each object read is checked against its manifest
        archive_retention_days=req.archive_retention_days,
        current_class=_current_class(measured))
    sc.put("stored_objects", stored.objects + sc.workload.stored_manifests.objects, sc.sources["objects"])
    return sc


def _pick(given: Any, configured: Any, default: Any) -> tuple[Any, str]:
    if given is not None:
        return given, "given"
    if configured is not None:
        return configured, "config"
    return default, "default"


def _size(req: Request, measured: Measurement | None, sc: Scenario) -> Decimal:
    if req.size_gb is not None:
        sc.put("size_gb", req.size_gb, "given")
    elif measured is not None:
        sc.put("size_gb", Decimal(measured.bytes) / GB, "measured")
    else:
        raise UsageError("give --size-gb (the archived size in GB), or --config to measure the bucket")
    return Decimal(sc.inputs["size_gb"])


def _object_size(req: Request, measured: Measurement | None, size_gb: Decimal,
                 sc: Scenario) -> tuple[Decimal, int]:
    """Average archive object size in MB, and the archive object count for size_gb."""
    if req.objects is not None:
        if size_gb > 0 and req.objects == 0:
            raise UsageError(f"--objects 0 cannot hold {size_gb} GB")
        avg = size_gb * 1024 / req.objects if req.objects else DEFAULT_OBJECT_MB
        sc.put("objects", req.objects, "given")
        sc.put("avg_object_mb", avg, "given")
        return avg, req.objects
    if req.avg_object_mb is not None:
        avg, src = req.avg_object_mb, "given"
    elif measured is not None and measured.objects:
        avg, src = Decimal(measured.bytes) / measured.objects / (1024 * 1024), "measured"
    else:
        avg, src = DEFAULT_OBJECT_MB, "assumed"
    sc.put("avg_object_mb", avg, src)
    if measured is not None and src == "measured" and sc.sources["size_gb"] == "measured":
        sc.put("objects", measured.objects, "measured")
    else:  # the size in objects of the average size: as assumed as that size, else worked out
        sc.put("objects", archive_objects(size_gb, avg), "assumed" if src == "assumed" else "derived")
    return avg, int(sc.inputs["objects"])


def _manifest_size(measured: Measurement | None, sc: Scenario) -> Decimal:
    if measured is not None and measured.manifests:
        sc.put("manifest_kb", Decimal(measured.manifest_bytes) / measured.manifests / KB, "measured")
    else:
        sc.put("manifest_kb", DEFAULT_MANIFEST_KB, "assumed")
    return Decimal(sc.inputs["manifest_kb"])


def _growth(req: Request, measured: Measurement | None, sc: Scenario) -> Decimal:
    if req.growth_gb_per_month is not None:
        sc.put("growth_gb_per_month", req.growth_gb_per_month, "given")
    elif measured is not None and measured.span_days >= MIN_GROWTH_SPAN_DAYS:
        # Archived bytes per month of archived data: the rate the archive grows once it is caught up.
        rate = Decimal(measured.bytes) / GB * DAYS_PER_MONTH / measured.span_days
        sc.put("growth_gb_per_month", rate, "measured")
    else:
        sc.put("growth_gb_per_month", Decimal(0), "default")
    return Decimal(sc.inputs["growth_gb_per_month"])


def _manifests(count: int, manifest_kb: Decimal) -> Population:
    """One manifest of manifest_kb per archive object."""
    return Population.uniform(manifest_kb * KB * count, count)


def _current_class(measured: Measurement | None) -> str | None:
    if measured is None or not measured.objects:
        return None
    return measured.classes.most_common(1)[0][0]
