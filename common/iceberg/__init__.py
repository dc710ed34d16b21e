"""An Apache Iceberg table over each archived table's own objects (issue 27, the `iceberg:` section):
no copy of the data, only Iceberg metadata that names the archive's Parquet objects, so Spark,
Trino, Athena, DuckDB and Polars find the table in a catalog.

Every tool that changes what a table's archive holds calls after_change() at the end of that
table (the archiver: new objects, retired partitions, drained fallback batches, --withdraw,
--migrate-layout; erase: its replacements; a new tool does the same). It reconciles the Iceberg
table with the archive (common/iceberg/sync.py), so a call that never came (a kill -9) is made
good by the next one. Without the section it does nothing and pyiceberg is never imported."""
from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from common.config import Config
from common.errors import ArchiverError, ConfigError, first_line

if TYPE_CHECKING:
    from common.iceberg.sync import SyncResult
    from common.archive.storage import Storage
    from common.archive.table_index import TableIndex, TableListing

log = logging.getLogger("iceberg")
INSTALL = "pip install 'pg-archiver[iceberg]'"


def enabled(cfg: Config) -> bool:
    return cfg.iceberg is not None


def require(cfg: Config) -> None:
    """With an `iceberg:` section, pyiceberg must be installed: a config error (exit 2) otherwise,
    before a tool changes anything."""
    if cfg.iceberg is not None and importlib.util.find_spec("pyiceberg") is None:
        raise ConfigError(f"{cfg.source}: iceberg: needs pyiceberg, which is not installed ({INSTALL})")


def after_change(cfg: Config, store: Storage, database: str, schema: str, table: str, *,
                 listing: TableListing | None = None, index: TableIndex | None = None,
                 dry_run: bool = False) -> SyncResult | None:
    """Bring the table's Iceberg table in line with `store` (the archive store; the fallback
    directory's batches are registered once drained). None without the section. An
    ArchiverError (IcebergError, exit 1) when the catalog cannot be reached or refuses, with no
    secret in its message; the archive itself is not affected, and the next call catches up.
    `listing` and `index`: the table's, when the caller has just read them (spares a re-read)."""
    if cfg.iceberg is None or store.location == "fallback":
        return None
    require(cfg)
    from common.iceberg.catalog import opened
    from common.iceberg.sync import IcebergError, sync_table

    try:
        with opened(cfg, read_only=dry_run) as catalog:
            return sync_table(cfg, store, database, schema, table, listing=listing, index=index, catalog=catalog,
                              dry_run=dry_run)
    except ArchiverError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyiceberg, SQLAlchemy, HTTP and S3 errors alike
        message = _without_secrets(cfg, first_line(exc, limit=300))
        raise IcebergError(f"Iceberg table of {database}/{schema}.{table} not updated "
                           f"({type(exc).__name__}: {message}); the archive is intact and the next run "
                           "registers its changes") from None  # a driver's error may carry a URL with its password


def _without_secrets(cfg: Config, text: str) -> str:
    from common.iceberg.catalog import catalog_properties, secret_values

    for value in secret_values(catalog_properties(cfg)[1]):
        text = text.replace(value, "***")
    return text


def describe(cfg: Config) -> dict[str, Any]:
    """The section as a dry run may show it: the catalog's properties with secrets hidden."""
    from common.iceberg.catalog import catalog_properties, redacted

    name, props = catalog_properties(cfg, with_credentials=False)
    return {"name": name, **redacted(props)}


def dry_run_lines(cfg: Config, store: Storage, database: str, schema: str, table: str) -> list[str]:
    """What a run would do to the table's Iceberg table (the dry run's lines; nothing is written)."""
    if cfg.iceberg is None:
        return []
    try:
        result = after_change(cfg, store, database, schema, table, dry_run=True)
    except ArchiverError as exc:
        return [f"    iceberg: error: {first_line(exc, limit=300)}"]
    if result is None:
        return []
    return [f"    iceberg: {result.summary()} (the run also registers what it archives)"]


def catalog_line(cfg: Config) -> str | None:
    """The dry run's line about the catalog, with no secret in it."""
    if cfg.iceberg is None:
        return None
    shown = describe(cfg)
    name = shown.pop("name")
    props = ", ".join(f"{k} {v}" for k, v in sorted(shown.items()) if not k.startswith("s3."))
    return f"iceberg: catalog {name} ({props}), namespace {cfg.iceberg.namespace or '<database name>'}"


def check(cfg: Config, store: Storage, database: str, schema: str, table: str, *, listing: TableListing,
          index: TableIndex) -> list[tuple[str, str, str]]:
    """validate's comparison of the table's Iceberg snapshot with its manifests: (kind, key, what),
    kinds iceberg_missing_file, iceberg_extra_file and iceberg_unreadable (the catalog or the
    table's metadata cannot be read; no secret in the message). Nothing without the section."""
    if cfg.iceberg is None or store.location == "fallback":
        return []
    require(cfg)
    from common.iceberg.catalog import identifier, opened
    from common.iceberg.sync import compare

    try:
        with opened(cfg, read_only=True) as catalog:
            return compare(cfg, listing, index, database, schema, table, catalog=catalog)
    except Exception as exc:  # noqa: BLE001 - reported, never raised: validate goes on with the rest
        message = _without_secrets(cfg, first_line(exc, limit=300))
        return [("iceberg_unreadable", identifier(cfg, database, schema, table),
                 f"the Iceberg table cannot be read ({type(exc).__name__}: {message})")]
