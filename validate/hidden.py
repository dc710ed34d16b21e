"""The hidden folders under a table's location that hold no rows (issue 17): `_digests/` (the run
digests, checked by validate/digests.py) and `_withdrawn/` (batches taken back under Object Lock,
common/withdrawals.py). The listing is filtered through here before objects are paired: control
keys are set aside, and a withdrawn batch is skipped like the archiver, restore and query skip it,
so it is neither checked, counted, nor taken for an overlap with the copy archived again.

A table's `_digests/` and `_withdrawn/` keys sort before its `year=` partitions ('_' < 'y' in S3's
byte order, and LocalStorage lists folders sorted), so the records are known before the objects
they name are met."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from common import layout
from common.manifest import sha256_hex
from common.storage import ObjectInfo, Storage
from common.withdrawals import Withdrawn, current_manifest, is_record, read
from validate.inventory import Entry

log = logging.getLogger("validate")


class HiddenFolders:
    def __init__(self, store: Storage) -> None:
        self.store = store
        self.withdrawn = Withdrawn()
        self.digests: dict[str, list[ObjectInfo]] = {}  # table location -> its digest objects
        self.skipped = 0  # withdrawn batches not checked

    def listing(self, infos: Iterable[ObjectInfo]) -> Iterator[ObjectInfo]:
        """The listing without control keys (kept aside here)."""
        for info in infos:
            if not layout.is_control_key(info.key):
                yield info
            elif is_record(info.key):
                self.withdrawn.add(read(self.store, info.key))
            elif f"/{layout.DIGESTS_DIR}" in info.key:
                root = info.key.split(f"/{layout.DIGESTS_DIR}", 1)[0] + "/"
                self.digests.setdefault(root, []).append(info)

    def counts(self, entry: Entry) -> bool:
        """False for a withdrawn batch (its current manifest is the one a record names)."""
        if not self.withdrawn.names(entry.key):
            return True
        raw = current_manifest(self.store, entry.key) if entry.manifest is not None else None
        if self.withdrawn.covers(entry.key, sha256_hex(raw) if raw is not None else None):
            self.skipped += 1
            return False
        return True

    def note(self) -> str | None:
        if not self.skipped:
            return None
        return (f"{self.skipped} withdrawn batches (taken back under Object Lock; their rows were archived again) "
                "were not checked: they do not count as archived")
