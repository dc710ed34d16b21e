"""A set of stored objects, reduced to what S3 prices depend on: how many there are and how big
each one is relative to the per-object thresholds (minimum billable size, monitoring cutoff)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from cost.prices import GB, KB, MAX_THRESHOLD_KB

#: Objects at least this big are kept only as a count and a byte total: every per-object threshold
#: in a price table is below it (prices.py enforces that), so their exact sizes cannot matter.
_EXACT_BELOW = MAX_THRESHOLD_KB * KB


@dataclass(frozen=True)
class Population:
    #: (bytes per object, number of objects) groups.
    groups: tuple[tuple[Decimal, int], ...] = ()

    @classmethod
    def uniform(cls, total_bytes: Decimal, objects: int) -> Population:
        """`objects` objects of equal size sharing `total_bytes`."""
        if objects <= 0:
            return cls()
        return cls(((Decimal(total_bytes) / objects, objects),))

    @classmethod
    def from_sizes(cls, sizes: Iterable[int]) -> Population:
        """Measured objects: exact sizes below the threshold limit, one average group above it."""
        small: Counter[int] = Counter()
        big_count, big_bytes = 0, 0
        for size in sizes:
            if size < _EXACT_BELOW:
                small[size] += 1
            else:
                big_count += 1
                big_bytes += size
        groups = [(Decimal(s), n) for s, n in sorted(small.items())]
        if big_count:
            groups.append((Decimal(big_bytes) / big_count, big_count))
        return cls(tuple(groups))

    def __add__(self, other: Population) -> Population:
        return Population(self.groups + other.groups)

    @property
    def objects(self) -> int:
        return sum(n for _, n in self.groups)

    @property
    def bytes(self) -> Decimal:
        return sum((size * n for size, n in self.groups), Decimal(0))

    @property
    def gb(self) -> Decimal:
        return self.bytes / GB

    def billable_gb(self, *, min_object_kb: int = 0, overhead_kb: int = 0) -> Decimal:
        """GB billed when each object counts as at least `min_object_kb`, plus `overhead_kb` each."""
        floor = Decimal(min_object_kb * KB)
        total = sum((max(size, floor) * n for size, n in self.groups), Decimal(0))
        return (total + Decimal(overhead_kb * KB) * self.objects) / GB

    def split(self, threshold_kb: int) -> tuple[Population, Population]:
        """(objects smaller than threshold_kb, the rest)."""
        limit = Decimal(threshold_kb * KB)
        below = tuple(g for g in self.groups if g[0] < limit)
        return Population(below), Population(tuple(g for g in self.groups if g[0] >= limit))
