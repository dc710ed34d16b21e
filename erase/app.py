"""The erase tool behind the CLI (issue 17): find the objects holding rows that match --where, refuse
the table when any of them cannot be rewritten (COMPLIANCE lock, or not readable without an S3
restore), otherwise replace each, record the erasure in the table's digest chain, and remove the
old objects (common/archive/replace.py says in what order, and why a kill at any point is safe)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from common import iceberg
from common.archive import digest, replace
from common.lifecycle import holds
from common.archive.catalog import Catalog, TableRef, resolve_table
from common.cli import Environment
from common.config import Config, load_config
from common.errors import ArchiverError, UsageError
from common.exit_codes import ExitCode
from common.lifecycle.hold_scope import holding
from common.hooks import Hook, env_hook
from common.jsonout import render_json
from common.lock import head_lock
from common.logging_setup import setup_logging
from common.archive.manifest import sha256_hex
from common.archive.s3client import check_object_lock
from common.archive.storage import S3Storage
from erase.find import Found, find
from erase.rewrite import Replaced, erasure, rewrite

log = logging.getLogger("erase")


class TableBusy(ArchiverError):
    """The archiver (or another erase) holds the table's advisory lock (exit 1)."""


@dataclass(frozen=True, kw_only=True)
class EraseOptions:
    config_path: Path
    database: str
    table: str
    where: str
    dry_run: bool = False
    output_format: str = "text"
    verbose: bool = False


@dataclass
class Outcome:
    ref: TableRef
    found: Found
    dry_run: bool
    refused: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    replaced: list[Replaced] = field(default_factory=list)
    finished: int = 0  # interrupted erasures completed
    digest_key: str | None = None

    @property
    def code(self) -> ExitCode:
        return ExitCode.FAILURE if self.refused else ExitCode.OK


def run(opts: EraseOptions, *, env: Environment | None = None, s3_client: Any | None = None,
        hook: Hook | None = None) -> int:
    env = env or Environment()
    if not opts.where.strip():
        raise UsageError("--where: give the condition that selects the rows to erase")
    cfg = load_config(opts.config_path)
    iceberg.require(cfg)
    setup_logging(None, verbose=opts.verbose)  # stderr only: stdout carries the report
    catalog = Catalog(cfg, s3_client=s3_client)
    ref = resolve_table(cfg, opts.database, opts.table)
    key_secret = None
    if not opts.dry_run:
        check_object_lock(cfg, catalog.primary)
        key_secret = digest.secret(cfg)
    with _table_lock(cfg, ref, skip=opts.dry_run):
        outcome = erase_table(cfg, catalog, ref, opts.where, dry_run=opts.dry_run, key_secret=key_secret,
                              hook=env_hook() if hook is None else hook)
    _emit(outcome, opts.output_format, env.stdout)
    return int(outcome.code)


def erase_table(cfg: Config, catalog: Catalog, ref: TableRef, where: str, *, dry_run: bool,
                key_secret: bytes | None, hook: Hook) -> Outcome:
    found, engine = find(catalog, ref, where)
    out = Outcome(ref, found, dry_run)
    try:
        out.refused = _held(catalog, ref, found) + _refusals(cfg, catalog, found)
        if dry_run or out.refused:
            return out  # a refusal changes nothing for the table: half an erasure is worse than none
        now = datetime.now(timezone.utc).isoformat()
        predicate = sha256_hex(where.encode())
        level = cfg.defaults.compression_level or 3
        assert engine is not None or not found.matches
        for match in found.matches:
            assert engine is not None
            out.replaced.append(rewrite(catalog, engine, match.obj, predicate_sha256=predicate, erased_at=now,
                                        level=level, hook=hook))
    finally:
        if engine is not None:
            engine.__exit__(None, None, None)
    _record_and_remove(cfg, catalog, out, key_secret=key_secret, hook=hook)
    return out


def _refusals(cfg: Config, catalog: Catalog, found: Found) -> list[tuple[str, str]]:
    """Objects that cannot be rewritten: every one is named, and none of the table's is touched."""
    refused = [(o.key, f"in {o.storage_class}: not readable without an S3 restore "
                       "(restore.main --request-glacier-restore), so its rows cannot be judged") for o in found.unreadable]
    store = catalog.primary
    if not isinstance(store, S3Storage):
        return refused
    now = datetime.now(timezone.utc)
    for m in found.matches:
        if m.obj.location != "s3":
            continue
        for key in replace.deleted_keys(m.obj):
            state = head_lock(store.client, store.bucket, key)
            if state.compliance_locked(now):
                refused.append((m.obj.key, f"{'its manifest is' if key != m.obj.key else ''} under COMPLIANCE lock "
                                f"until {state.retain_until:%Y-%m-%d}: nobody can rewrite or delete it before then"))
                break
    return refused


def _held(catalog: Catalog, ref: TableRef, found: Found) -> list[tuple[str, str]]:
    """Objects a legal hold holds (issue 29): a hold wins over an erasure, so the table is refused."""
    active = holds.active(catalog.primary, catalog.prefix, ref.database, ref.schema, ref.table)
    refused = []
    for m in found.matches if active else []:
        for h in holding(catalog, active, m.obj):
            refused.append((m.obj.key, f"under legal hold {h.hold_id} (reason: {h.reason}; placed {h.placed_at} by "
                                       f"{h.placed_by}): a legal hold wins over an erasure until it is released"))
    return refused


def _record_and_remove(cfg: Config, catalog: Catalog, out: Outcome, *, key_secret: bytes | None, hook: Hook) -> None:
    """The digest of this erasure (and of any an interrupted run left unrecorded), then the old
    objects (common/archive/replace.py). An interrupted --migrate-layout rewrite is finished too: it is
    recorded without an erasure record (it erased nothing)."""
    pending = list(out.found.interrupted)
    ref = out.ref
    # The Iceberg table drops the old objects before they go (a scan never meets a file that is
    # gone); when it cannot, they go all the same: a scan then fails on them rather than return
    # an erased row, until the next sync (any tool's) registers the replacements.
    out.digest_key = replace.finish(
        catalog, ref, out.replaced, pending, kind="erase", key_secret=key_secret, hook=hook, erasure=erasure,
        before_removal=lambda: iceberg.after_change(cfg, catalog.primary, ref.database, ref.schema, ref.table))
    if out.digest_key:
        erased = [r for r in out.replaced if erasure(r.old, r.new_key, r.replaces)]
        log.info("digest %s records the erasure of %d rows from %d objects", out.digest_key,
                 sum(int(r.replaces.get("rows_removed") or 0) for r in erased), len(erased))
    out.finished = len(pending)


@contextmanager
def _table_lock(cfg: Config, ref: TableRef, *, skip: bool) -> Iterator[None]:
    """The archiver's advisory lock on the table: erase and a run never write one chain at once."""
    if skip:
        yield
        return
    with replace.table_lock(cfg, ref, role="erase") as held:
        if not held:
            raise TableBusy(f"{ref.database}/{ref.name} is being archived (advisory lock held): try again when the run ends")
        yield


# -- output ----------------------------------------------------------------------------------------
def _emit(out: Outcome, fmt: str, stream: IO[str]) -> None:
    stream.write(render_json(_document(out)) if fmt == "json" else "\n".join(_lines(out)) + "\n")
    stream.flush()


def _document(out: Outcome) -> dict[str, Any]:
    replaced = {r.old.key: r.new_key for r in out.replaced}
    return {
        "database": out.ref.database, "table": out.ref.name, "dry_run": out.dry_run, "ok": not out.refused,
        "objects_searched": out.found.objects, "rows_matching": out.found.rows,
        "rows_erased": 0 if out.dry_run or out.refused else out.found.rows,
        "objects": [{"key": m.obj.key, "rows": m.rows, "matching": m.matching, "replacement": replaced.get(m.obj.key)}
                    for m in out.found.matches],
        "refused": [{"key": k, "reason": why} for k, why in out.refused],
        "interrupted_erasures_finished": out.finished, "digest": out.digest_key,
    }


def _lines(out: Outcome) -> list[str]:
    lines = [f"refused: {k}: {why}" for k, why in out.refused]
    replaced = {r.old.key: r.new_key for r in out.replaced}
    for m in out.found.matches:
        tail = f" -> {replaced[m.obj.key]}" if m.obj.key in replaced else ""
        lines.append(f"{'would erase' if out.dry_run or out.refused else 'erased'} {m.matching} of {m.rows} rows in {m.obj.key}{tail}")
    if out.found.interrupted and out.dry_run:
        lines.append(f"{len(out.found.interrupted)} interrupted erasures would be finished (old objects removed)")
    elif out.finished:
        lines.append(f"finished {out.finished} interrupted erasures")
    what = ("dry run: nothing was changed" if out.dry_run else
            "refused: nothing was changed for this table" if out.refused else
            f"erased {out.found.rows} rows from {len(out.found.matches)} objects" + (f"; digest {out.digest_key}" if out.digest_key else ""))
    lines.append(f"summary: {out.ref.database}/{out.ref.name}: {out.found.objects} objects searched, "
                 f"{out.found.rows} matching rows in {len(out.found.matches)} objects: {what}")
    return lines
