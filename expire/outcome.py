"""What an expire run did to one table: its plan (what went, what was kept and why) and what was done."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.archive.catalog import TableRef
from common.lifecycle.holds import Hold
from expire.plan import Plan
from expire.table import Done


@dataclass
class TableOutcome:
    ref: TableRef
    retention_days: int | None
    plan: Plan | None = None
    done: Done | None = None
    holds: list[Hold] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.done and self.done.failed)
