"""`--migrate-manifests`: move manifests written before the hidden sidecars (`<key>.manifest.json`)
to where the archiver writes them now (`_<name>.manifest.json`, common.layout), in the archive
store and the fallback directory. Safe to stop and to repeat: a manifest is copied (its checksum
verified by the store), then the old key is deleted; one already copied is only deleted, after its
bytes are compared; one whose new copy differs is left in both places and reported."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from common import layout
from common.config import Config
from common.manifest import Manifest, sha256_hex
from common.storage import Storage

log = logging.getLogger("archiver.migrate")


@dataclass
class Migration:
    moved: int = 0
    already: int = 0  # the new copy was there with the same bytes: only the old key was removed
    conflicts: list[str] = field(default_factory=list)  # both there with different bytes: left alone

    def summary(self) -> str:
        text = f"moved {self.moved} manifests to hidden sidecars ({self.already} had been copied already)"
        if self.conflicts:
            text += f"; {len(self.conflicts)} left in both places because the copies differ (run validate)"
        return text


def migrate_manifests(cfg: Config, stores: list[Storage]) -> Migration:
    result = Migration()
    prefixes = [layout.database_prefix(cfg.s3.prefix, db.name) for db in cfg.databases]
    for store in stores:
        for prefix in prefixes:
            for info in list(store.list(prefix)):
                if layout.is_legacy_manifest(info.key):
                    _move(store, info.key, result)
    log.info("%s", result.summary())
    return result


def _move(store: Storage, old: str, result: Migration) -> None:
    body = store.get(old)
    Manifest.from_bytes(body, key=old)  # an unreadable manifest stays where it is (DataIntegrityError)
    new = layout.manifest_key(layout.data_key(old))
    present = store.head(new)
    if present is None:
        # put() sends the SHA-256 and checks the one the store answers with before the old key goes.
        store.put(new, body, sha256=sha256_hex(body))
        result.moved += 1
    elif sha256_hex(store.get(new)) == sha256_hex(body):
        result.already += 1
    else:
        result.conflicts.append(old)
        log.warning("manifest %s differs from its hidden copy %s: both kept", old, new)
        return
    store.delete(old)
