"""Named points of a move where tests step in (issue 3: "targeted points via a test-only
environment hook"). The sink, the pipeline and the table job are each handed one Hook and call it
with the point's name; production runs hand them the environment's, a no-op unless
ARCHIVER_TEST_KILL_AT is set.

The points, in a batch's order:
  after_read                   the reader thread has read a batch (not yet encoded)
  after_checkpoint             the batch is pending in the checkpoint, its upload not started
  between_object_and_manifest  the object is stored and verified, its manifest is not
  after_upload                 a group of objects stored, their rows not yet deleted, no manifest
  after_manifest_set           the group's DELETE ran and its manifest set is stored, not committed
  before_commit                the same moment, as the commit is about to be sent
  after_delete                 committed, the checkpoint not yet updated
  before_digest                the table's moves are done, its run digest not yet written
  before_iceberg               the digest written, the table's Iceberg table not yet updated
                               (only with an `iceberg:` section; common/iceberg)

A partition retired whole (archiver/retire.py) passes after_checkpoint, between_object_and_manifest
and after_upload per batch (no delete), then:
  after_manifest_set           the leaf re-counted, its batches' manifest set stored
  after_partition_archived     the same moment, the leaf not yet detached
  after_detach                 DETACH committed, the batches still pending
  before_drop                  the batches finished, the detached leaf not yet dropped

`--migrate-layout` (archiver/migration/layout.py):
  after_migration_set          a table's legacy manifests are stored in a set, not yet deleted
  after_replacement            an object of mixed schema has its replacement and manifest stored
                               (common/archive/replace.py; erase passes it too)
  after_migration_digest       a table's rewrites are recorded in its digest chain, no old object removed
  after_old_removed            one replaced object is removed
  before_iceberg               the tables migrated and rewritten, their Iceberg tables not yet updated
"""
from __future__ import annotations

# The machinery is shared with the erase tool (common/hooks.py); the points above are the archiver's.
from common.hooks import HOOK_ENV, Hook, KillAt, env_hook, no_hook

__all__ = ["HOOK_ENV", "Hook", "KillAt", "env_hook", "no_hook"]
