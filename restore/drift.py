"""Schema drift between an archive and the live table: which archived columns go back, which live
columns take their defaults, and when to stop rather than restore something different (issue 4)."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import ArchiverError
from common.conform import pg_widens
from common.pgtypes import Column, TableSchema


class SchemaDrift(ArchiverError):
    """The live table lost or retyped an archived column (exit 1; --allow-drop-columns goes on)."""


@dataclass(frozen=True)
class ColumnPlan:
    #: Archived columns written to the target, in archive order.
    load: tuple[str, ...]
    #: Archived columns not restored (gone or retyped in the live table; --allow-drop-columns).
    dropped: tuple[str, ...] = ()
    #: Live columns the archive does not have: they get their defaults.
    defaulted: tuple[str, ...] = ()
    #: Live generated columns: PostgreSQL recomputes them.
    recomputed: tuple[str, ...] = ()
    #: Loaded columns whose live type is wider than the archived one (int to bigint, varchar(n) to
    #: text...: common.conform.pg_widens), as the live table declares them: the values go in as
    #: that type.
    widened: tuple[Column, ...] = ()


def plan_columns(archived: TableSchema, live: TableSchema, *, primary_key: list[str], allow_drop: bool,
                 key: str, target: str) -> ColumnPlan:
    live_by_name = {c.name: c for c in live.columns}
    archived_names = set(archived.names)
    load: list[str] = []
    lost: list[str] = []
    retyped: list[tuple[str, str, str]] = []  # (name, archived type, live type)
    widened: list[Column] = []
    for col in archived.columns:
        now = live_by_name.get(col.name)
        if now is None:
            lost.append(col.name)
        elif now.generated:
            continue
        elif now.pg_type == col.pg_type:
            load.append(col.name)
        elif pg_widens(col, now):
            load.append(col.name)
            widened.append(now)
        else:
            retyped.append((col.name, col.pg_type, now.pg_type))
    missing_pk = [c for c in primary_key if c not in load]
    if missing_pk:
        raise SchemaDrift(f"{key}: primary key column(s) {', '.join(missing_pk)} of {target} cannot be restored "
                          f"from this archive (missing or of another type)")
    if (lost or retyped) and not allow_drop:
        parts = []
        if lost:
            parts.append(f"archived column(s) {', '.join(lost)} no longer exist in {target}")
        if retyped:
            parts.append("column(s) changed type: " + ", ".join(f"{n} ({old} -> {new})" for n, old, new in retyped))
        raise SchemaDrift(f"{key}: schema drift: {'; '.join(parts)}. "
                          "Rerun with --allow-drop-columns to restore the other columns without them")
    return ColumnPlan(
        load=tuple(load),
        dropped=tuple(lost + [n for n, _, _ in retyped]),
        defaulted=tuple(c.name for c in live.columns if c.name not in archived_names and not c.generated),
        recomputed=tuple(c.name for c in live.columns if c.generated),
        widened=tuple(widened),
    )
