"""`--migrate-layout` (issue 27): move an archive written in the legacy layout to the current one
(common/archive/layout.py), in the archive store and the fallback directory, table by table:

- per-object sidecar manifests (`_<name>.manifest.json`, or `<name>.manifest.json` from before
  issue 16) go into manifest sets in the table's control folder, each keeping its identity (the
  SHA-256 of its bytes, which digests and withdrawal records name);
- the run digests of `_digests/` and the withdrawal records of `_withdrawn/` are copied, byte for
  byte and under the same name, into the control folder's `digests/` and `withdrawn/`.

A legacy key is deleted only once its copy is stored and verified (the store checks the checksum
of every PUT). Safe to stop and to repeat: a manifest already in a set, or a digest or record
already copied with the same bytes, is only deleted. Under Object Lock nothing is deleted: the
copies are made, the originals stay (readers count each once) and are reported. A legacy-named
sidecar whose bytes differ from its hidden copy is left in place and reported (validate shows it).
Then objects whose column types differ from their table's schema (`mixed_schema`) are rewritten in
it, verified, as erase replaces an object (archiver/migration/schema.py, common/archive/replace.py); an object
under Object Lock is reported, not rewritten. `--dry-run` counts what would move and be rewritten,
and changes nothing."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from archiver.hooks import Hook, env_hook
from archiver.migration.schema import Rewrites, rewrite_schemas
from common import iceberg
from common.archive import layout, manifest_sets
from common.archive.catalog import Catalog
from common.config import Config
from common.errors import ArchiverError, DataIntegrityError
from common.archive.manifest import sha256_hex
from common.archive.storage import Storage
from common.archive.table_index import READERS, TableListing, by_table, list_table, load_index, load_table
from common.archive.withdrawals import withdraw

log = logging.getLogger("archiver.migration.layout")
#: Manifests per set written by the migration: a set is read whole by every reader of the table.
SET_ENTRIES = 1000


@dataclass
class Migration:
    dry_run: bool = False
    tables: int = 0
    manifests: int = 0  # sidecars recorded in manifest sets
    digests: int = 0
    records: int = 0
    removed: int = 0  # legacy keys deleted, their copies verified
    locked: list[str] = field(default_factory=list)  # legacy keys kept: the bucket has Object Lock
    conflicts: list[str] = field(default_factory=list)  # a legacy-named sidecar unlike its hidden copy
    rewrites: Rewrites = field(default_factory=Rewrites)  # objects of mixed schema (archiver/migration/schema.py)
    iceberg: list[str] = field(default_factory=list)  # each Iceberg table's sync (the iceberg: section)

    @property
    def failed(self) -> bool:
        """Something is left that a rerun (or the operator) must finish: exit 1."""
        return bool(self.conflicts or self.rewrites.busy)

    def summary(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        text = (f"{verb} {self.manifests} manifests, {self.digests} digests and {self.records} withdrawal records of "
                f"{self.tables} tables to their control folders")
        if not self.dry_run:
            text += f"; {self.removed} legacy keys removed"
        if self.locked:
            text += f"; {len(self.locked)} legacy keys kept in place under Object Lock (each is counted once)"
        if self.conflicts:
            text += f"; {len(self.conflicts)} left in place because they differ from their hidden copy (run validate)"
        return "\n".join([f"{text}; {self.rewrites.summary(self.dry_run)}", *self.iceberg])


def migrate_layout(cfg: Config, stores: list[Storage], *, dry_run: bool = False, hook: Hook | None = None,
                   catalog: Catalog | None = None) -> Migration:
    """The layout moved in `stores`, then the objects of mixed schema the catalog (by default: the
    configured archive store and fallback directory) finds rewritten."""
    result = Migration(dry_run=dry_run)
    hook = env_hook() if hook is None else hook
    prefix = cfg.s3.prefix
    archived: list[tuple[Storage, tuple[str, str, str]]] = []
    for store in stores:
        for db in cfg.databases:
            tables = [t for t, _infos in by_table(store.list(layout.database_prefix(prefix, db.name)), prefix)
                      if t is not None]
            for ident in tables:
                listing = list_table(store, prefix, *ident)
                if listing.legacy:
                    result.tables += 1
                    _Table(store, prefix, listing, result, hook).migrate()
                if store.location != "fallback":
                    archived.append((store, ident))
    result.rewrites = rewrite_schemas(cfg, catalog or Catalog(cfg), dry_run=dry_run, hook=hook)
    # Iceberg last: the rewrites replace objects its tables must register instead of the old ones.
    for store, ident in archived if iceberg.enabled(cfg) else []:
        hook("before_iceberg")
        synced = iceberg.after_change(cfg, store, *ident, dry_run=dry_run)
        result.iceberg += [synced.summary()] if synced is not None else []
    log.info("%s", result.summary())
    return result


class _Table:
    def __init__(self, store: Storage, prefix: str, listing: TableListing, result: Migration, hook: Hook) -> None:
        self.store, self.prefix, self.listing, self.result, self.hook = store, prefix, listing, result, hook
        self.locked = getattr(store, "object_lock", None) is not None

    def migrate(self) -> None:
        self._manifests()
        for info in self.listing.digests:
            if not layout.in_control(info.key):
                self._copy(info.key, layout.DIGESTS)
                self.result.digests += 1
        for info in self.listing.records:
            if not layout.in_control(info.key):
                self._copy(info.key, layout.WITHDRAWN)
                self.result.records += 1

    def _manifests(self) -> None:
        chosen = {i.key for i in self.listing.sidecars.values()}
        index = load_index(self.store, self.listing)
        with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="migrate") as ex:
            raw = dict(zip(sorted(chosen), ex.map(lambda k: bytes(self.store.get(k)), sorted(chosen))))
        todo: list[bytes] = []
        for key, body in raw.items():
            r = manifest_sets.read_sidecar(body, key=key)  # an unreadable one stays (DataIntegrityError)
            if not any(o.sha256 == r.sha256 and not o.legacy for o in index.recorded(r.key)):
                todo.append(body)
        self.result.manifests += len(todo)
        if self.result.dry_run:
            return
        for start in range(0, len(todo), SET_ENTRIES):
            manifest_sets.write(self.store, prefix=self.prefix, manifests=todo[start:start + SET_ENTRIES])
        self.hook("after_migration_set")
        for info in self.listing.legacy:
            if not layout.is_manifest(info.key):
                continue
            if info.key in chosen or self._same_as_chosen(info.key, raw):
                self._remove(info.key)
            else:
                self.result.conflicts.append(info.key)
                log.warning("manifest %s differs from its hidden copy %s: kept", info.key,
                            layout.manifest_key(layout.data_key(info.key)))

    def _same_as_chosen(self, key: str, raw: dict[str, bytes]) -> bool:
        """A legacy-named sidecar beside its hidden copy (an interrupted --migrate-manifests)."""
        hidden = raw.get(layout.manifest_key(layout.data_key(key)))
        return hidden is not None and sha256_hex(bytes(self.store.get(key))) == sha256_hex(hidden)

    def _copy(self, key: str, folder: str) -> None:
        """A digest or a record, byte for byte, to the same name in the control folder."""
        if self.result.dry_run:
            return
        target = f"{layout.control_of(self.prefix, key)}{folder}{key.rpartition('/')[2]}"
        body = bytes(self.store.get(key))
        if self.store.head(target) is None:
            self.store.put(target, body, sha256=sha256_hex(body))
        elif sha256_hex(bytes(self.store.get(target))) != sha256_hex(body):
            raise DataIntegrityError(f"{target} exists with other bytes than {key}: neither is changed; compare them")
        self._remove(key)

    def _remove(self, key: str) -> None:
        if self.locked:
            self.result.locked.append(key)
            return
        self.store.delete(key)
        self.result.removed += 1


def withdraw_by_hand(cfg: Config, stores: list[Storage], key: str) -> str:
    """`--withdraw KEY`: a withdrawal record for the object's manifest that counts now (the runbook's
    repair of a damaged object whose rows are back in the table). ArchiverError (exit 1) when the
    key is no archived object of a configured table."""
    prefix = cfg.s3.prefix
    parsed = layout.parse_key(prefix, key)
    if parsed is None:
        raise ArchiverError(f"{key}: not an archive object key under s3.prefix {prefix!r}")
    try:
        cfg.table(parsed.database, parsed.table, parsed.schema)
    except Exception as exc:  # noqa: BLE001 - the config's own message says which
        raise ArchiverError(f"{key}: {exc}") from None
    for store in stores:
        recorded = load_table(store, prefix, parsed.database, parsed.schema, parsed.table)[1].current(key)
        if recorded is not None:
            withdraw(store, prefix=prefix, manifest=recorded.manifest, manifest_sha256=recorded.sha256,
                     reason="withdrawn by hand (--withdraw)")
            iceberg.after_change(cfg, store, parsed.database, parsed.schema, parsed.table)
            return (f"withdrawn: {key} ({recorded.manifest.rows} rows) no longer counts as archived in "
                    f"{store.location}; the archiver archives its rows again if they are in the table")
    raise ArchiverError(f"{key}: no archived object with a manifest that counts (already withdrawn?)")
