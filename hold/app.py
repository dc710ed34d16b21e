"""The hold tool behind the CLI (issue 29): place a legal hold on a table's archived objects (by
days, by rows, or the whole table), release one, or list them.

Placing: the hold record first (common/lifecycle/holds.py; from then on every tool honours it), then, on a
bucket with Object Lock, S3's own legal hold on each object it holds, then the digest. Releasing:
the release record, then S3's legal hold lifted from the objects no other hold in force holds,
then the digest. A kill -9 between the steps leaves the hold in force (placing) or released
(releasing) as recorded; running the same release again finishes it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from common.archive import digest
from common.lifecycle import holds as holds_mod
from common.archive.catalog import ArchiveObject, Catalog, TableRef, parse_range, resolve_table
from common.cli import Environment
from common.config import Config, load_config
from common.errors import UsageError
from common.exit_codes import ExitCode
from common.lifecycle.hold_scope import covers, engine, holding, matches
from common.hooks import Hook, env_hook
from common.jsonout import render_json
from common.logging_setup import setup_logging
from common.archive.s3client import check_object_lock
from common.lifecycle.table_session import table_session
from common.lifecycle.legal_hold import Legal

log = logging.getLogger("hold")


@dataclass(frozen=True, kw_only=True)
class HoldOptions:
    config_path: Path
    database: str
    table: str
    reason: str | None = None
    by: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    where: str | None = None
    release: str | None = None
    list_holds: bool = False
    dry_run: bool = False
    output_format: str = "text"
    verbose: bool = False


@dataclass
class Outcome:
    action: str  # place | release | list
    ref: TableRef
    holds: list[holds_mod.Hold] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # held (place) or whose S3 legal hold was lifted (release)
    s3_legal_holds: int = 0
    digest_key: str | None = None
    dry_run: bool = False


def run(opts: HoldOptions, *, env: Environment | None = None, s3_client: Any | None = None,
        hook: Hook | None = None) -> int:
    env = env or Environment()
    check_options(opts)
    cfg = load_config(opts.config_path)
    setup_logging(cfg.logging, verbose=opts.verbose)
    catalog = Catalog(cfg, s3_client=s3_client)
    ref = resolve_table(cfg, opts.database, opts.table)
    hook = env_hook() if hook is None else hook
    if opts.list_holds:
        out = Outcome("list", ref, holds_mod.load(catalog.primary, catalog.prefix, ref.database, ref.schema, ref.table))
    else:
        if not opts.dry_run:
            check_object_lock(cfg, catalog.primary)
        with table_session(cfg, ref.database, ref.schema, ref.table, role="hold", lock=not opts.dry_run) as session:
            now = session.now().isoformat()
            key_secret = None if opts.dry_run else digest.secret(cfg)
            if opts.release:
                out = release(cfg, catalog, ref, opts, now=now, key_secret=key_secret, hook=hook)
            else:
                out = place(catalog, ref, opts, now=now, key_secret=key_secret, hook=hook)
    _emit(out, opts.output_format, env.stdout)
    return int(ExitCode.OK)


def check_options(opts: HoldOptions) -> None:
    scoped = opts.start_date or opts.end_date or opts.where
    if opts.list_holds:
        if opts.release or scoped:
            raise UsageError("--list: give no --release, --start-date, --end-date or --where with it")
        return
    if not (opts.reason or "").strip():
        raise UsageError("--reason is required: why the hold is placed (or released), for the record")
    if opts.release and scoped:
        raise UsageError("--release: a hold is released by its id alone (see --list)")
    if opts.where is not None and (opts.start_date or opts.end_date):
        raise UsageError("--where and --start-date/--end-date: give one scope (separate holds for both)")
    if opts.where is not None and not opts.where.strip():
        raise UsageError("--where: give the condition selecting the rows to hold")


# -- placing ---------------------------------------------------------------------------------------
def place(catalog: Catalog, ref: TableRef, opts: HoldOptions, *, now: str, key_secret: bytes | None,
          hook: Hook) -> Outcome:
    start, end = parse_range(opts.start_date, opts.end_date)
    scope = "where" if opts.where else "dates" if (start or end) else "table"
    assert opts.reason is not None
    hold = holds_mod.Hold(holds_mod.new_id(datetime.fromisoformat(now), opts.reason), ref.database, ref.schema, ref.table, scope,
                          opts.reason.strip(), holds_mod.who(opts.by), now,
                          start_date=_iso(start), end_date=_iso(end), where=opts.where)
    hold.objects = [o.key for o in _held_now(catalog, ref, hold, start, end)]
    out = Outcome("place", ref, [hold], list(hold.objects), dry_run=opts.dry_run)
    if opts.dry_run:
        return out
    key = holds_mod.write_hold(catalog.primary, catalog.prefix, hold)
    log.info("legal hold %s placed on %s/%s (%s) by %s: %s; %d objects held now (record %s)", hold.hold_id,
             ref.database, ref.name, hold.describe(), hold.placed_by, hold.reason, len(hold.objects), key)
    hook("after_hold_record")
    legal = Legal.of(catalog)
    out.s3_legal_holds = legal.set(hold.objects, on=True)
    out.digest_key = _digest(catalog, ref, [holds_mod.event(hold, "place")], key_secret)
    return out


def _held_now(catalog: Catalog, ref: TableRef, hold: holds_mod.Hold, start: date | None,
              end: date | None) -> list[ArchiveObject]:
    objects = catalog.list_objects(ref, start=start, end=end)
    if hold.scope != "where" or not objects:
        return objects
    with engine(hold, objects, timestamp_column=ref.timestamp_column or "", key_columns=ref.primary_key or ()) as e:
        e.check()  # a bad --where is a usage error before anything is downloaded
    return [o for o in objects if matches(catalog, hold, o)]


# -- releasing -------------------------------------------------------------------------------------
def release(cfg: Config, catalog: Catalog, ref: TableRef, opts: HoldOptions, *, now: str, key_secret: bytes | None,
            hook: Hook) -> Outcome:
    store, prefix = catalog.primary, catalog.prefix
    every = holds_mod.load(store, prefix, ref.database, ref.schema, ref.table)
    hold = next((h for h in every if h.hold_id == opts.release), None)
    if hold is None:
        known = ", ".join(h.hold_id for h in every) or "none"
        raise UsageError(f"--release {opts.release}: no such hold on {ref.database}/{ref.name} (holds: {known})")
    out = Outcome("release", ref, [hold], dry_run=opts.dry_run)
    if opts.dry_run:
        return out
    if hold.released is None:
        assert opts.reason is not None
        hold.released = holds_mod.Release(hold.hold_id, opts.reason.strip(), holds_mod.who(opts.by), now)
        key = holds_mod.write_release(store, prefix, hold, hold.released)
        log.info("legal hold %s on %s/%s released by %s: %s (record %s)", hold.hold_id, ref.database, ref.name,
                 hold.released.released_by, hold.released.reason, key)
    else:
        log.info("legal hold %s was already released at %s: finishing its release", hold.hold_id, hold.released.released_at)
    hook("after_release_record")
    others = [h for h in every if h.active and h.hold_id != hold.hold_id]
    legal = Legal.of(catalog)
    if legal.locked and not (cfg.s3.object_lock and cfg.s3.object_lock.legal_hold):
        out.objects = _to_lift(catalog, ref, hold, others, legal)
        out.s3_legal_holds = legal.set(out.objects, on=False)
    if not _released_in_chain(catalog, ref, hold.hold_id):
        out.digest_key = _digest(catalog, ref, [holds_mod.event(hold, "release")], key_secret)
    return out


def _to_lift(catalog: Catalog, ref: TableRef, hold: holds_mod.Hold, others: list[holds_mod.Hold],
             legal: Legal) -> list[str]:
    """The objects whose S3 legal hold this hold set (its own, and those written into its scope
    since) and that no other hold in force holds."""
    lifted = []
    for obj in catalog.list_objects(ref):
        if not legal.is_on(obj.key):
            continue
        if covers(catalog, hold, obj) and not holding(catalog, others, obj):
            lifted.append(obj.key)
    return lifted


def _released_in_chain(catalog: Catalog, ref: TableRef, hold_id: str) -> bool:
    store, prefix = catalog.primary, catalog.prefix
    for key in reversed(digest.chain_keys(store, prefix, ref.database, ref.schema, ref.table)):
        d = digest.Digest.from_bytes(bytes(store.get(key)), key=key)
        if any(e.get("hold_id") == hold_id and e.get("action") == "release" for e in d.holds):
            return True
    return False


def _digest(catalog: Catalog, ref: TableRef, events: list[dict[str, Any]], key_secret: bytes | None) -> str:
    key = digest.write(catalog.primary, prefix=catalog.prefix, database=ref.database, schema=ref.schema,
                       table=ref.table, objects=[], holds=events, kind="hold", key_secret=key_secret)
    log.info("digest %s records the legal hold %s (%s)", key, events[0]["hold_id"], events[0]["action"])
    return key


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


# -- output ----------------------------------------------------------------------------------------
def _emit(out: Outcome, fmt: str, stream: IO[str]) -> None:
    stream.write(render_json(_document(out)) if fmt == "json" else "".join(line + "\n" for line in _lines(out)))
    stream.flush()


def _document(out: Outcome) -> dict[str, Any]:
    doc: dict[str, Any] = {"action": out.action, "database": out.ref.database, "table": out.ref.name,
                           "dry_run": out.dry_run, "holds": [_hold_json(h) for h in out.holds]}
    if out.action != "list":
        doc.update(objects=out.objects, s3_legal_holds=out.s3_legal_holds, digest=out.digest_key)
    return doc


def _hold_json(h: holds_mod.Hold) -> dict[str, Any]:
    doc = h.to_json()
    doc["scope_description"] = h.describe()
    return doc


def _lines(out: Outcome) -> list[str]:
    if out.action == "list":
        if not out.holds:
            return [f"{out.ref.database}/{out.ref.name}: no legal holds"]
        return [_hold_line(h) for h in out.holds]
    h = out.holds[0]
    if out.action == "place":
        verb = "would place" if out.dry_run else "placed"
        lines = [f"{verb} legal hold {h.hold_id} on {out.ref.database}/{out.ref.name}: {h.describe()}; "
                 f"{len(h.objects)} objects held now; reason: {h.reason}; by {h.placed_by}"]
        lines += [f"held {k}" for k in out.objects]
    else:
        lines = [f"{'would release' if out.dry_run else 'released'} legal hold {h.hold_id} on "
                 f"{out.ref.database}/{out.ref.name}"
                 + (f"; reason: {h.released.reason}; by {h.released.released_by}" if h.released else "")]
    if out.s3_legal_holds:
        lines.append(f"S3 legal hold {'ON' if out.action == 'place' else 'OFF'} on {out.s3_legal_holds} objects")
    return lines


def _hold_line(h: holds_mod.Hold) -> str:
    state = "ACTIVE" if h.active else f"released {h.released.released_at} by {h.released.released_by}: {h.released.reason}" \
        if h.released else ""
    return (f"{h.hold_id} {state}; {h.describe()}; placed {h.placed_at} by {h.placed_by}: {h.reason}; "
            f"{len(h.objects)} objects when placed")
