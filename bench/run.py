"""The benchmark of issues 2, 4 and 5: `python -m bench.run` (or `python bench/run.py`).

Seeds a throwaway `audit_logs` database on the local PostgreSQL (ARCHIVER_BENCH_DSN, an admin DSN),
starts a moto S3 server on a free loopback port, and times each tool against its plain-tools
baseline in the same run. Prints a table and writes bench/results/latest.json."""
from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable, not bench/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import click
import psycopg

from bench import part_archive, part_expire, part_partitions, part_query, part_restore, part_validate, pyspy
from bench.context import Context
from bench.env import REPO, moto_endpoint, s3_client
from bench.report import PartResult, server_table, table, write_json
from bench.seed import databases
from common.pg.db import describe_target
from common.errors import first_line

DEFAULT_DSN = "host=127.0.0.1 port=5432 user=root dbname=postgres"
PARTS = ("archive", "partitions", "restore", "validate", "query", "expire")


def preflight(dsn: str) -> str:
    """The server version, or a one-line reason the benchmark cannot run (exit 3)."""
    for tool in ("psql", "zstd"):
        if shutil.which(tool) is None:
            raise click.ClickException(f"`{tool}` is not installed; the baseline needs it (apt-get install {tool if tool == 'zstd' else 'postgresql-client'})")
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.OperationalError as exc:
        # describe_target: host:port/dbname, never a password the DSN may carry
        click.echo(f"bench: cannot reach PostgreSQL at {describe_target(dsn)} (set ARCHIVER_BENCH_DSN): {first_line(exc)}", err=True)
        sys.exit(3)
    return str(row[0]) if row else "?"


def parse_parts(value: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise click.BadParameter(f"choose from {', '.join(PARTS)}, comma-separated")
    return parts


def run_parts(ctx: Context, parts: tuple[str, ...], *, rss_scaling: bool,
              repeat: int) -> tuple[list[PartResult], dict[str, Any]]:
    results: list[PartResult] = []
    extra: dict[str, Any] = {}
    # restore and validate work on the archiver's output, so the archiver always runs; the
    # partitioned variant is timed against the archive part's baseline.
    results.append(part_archive.run(ctx, with_baseline="archive" in parts or "partitions" in parts, repeat=repeat))
    if "archive" not in parts and "partitions" not in parts:
        results[0].name = "archiver (setup)"
    if "partitions" in parts:
        results.append(part_partitions.run(ctx, baseline=results[0], repeat=repeat))
    if "restore" in parts:
        results.append(part_restore.run(ctx, repeat=repeat))
    if "validate" in parts:
        results.append(part_validate.run(ctx, repeat=repeat))
    if "query" in parts:
        results.extend(part_query.run(ctx))
    if "expire" in parts:  # last: it works on copies of the archive, but the others need none
        results.append(part_expire.run(ctx, repeat=repeat))
    if ctx.profile:
        extra["profile"] = pyspy.profile_archiver(ctx)
    if rss_scaling:
        extra["rss_scaling"] = part_archive.rss_scaling(ctx)
    return results, extra


def print_extra(extra: dict[str, Any]) -> None:
    if "rss_scaling" in extra:
        click.echo("\narchiver peak RSS by table size (should stay flat):")
        for rows, r in extra["rss_scaling"].items():
            click.echo(f"  {int(rows):>10,} rows: {r['peak_rss_mb']:6.0f} MB, {r['seconds']:6.1f} s, exit {r['returncode']}, "
                       f"{r['eligible_left']} eligible rows left")
            if r["error"]:
                click.echo(f"      {r['error']}")
    if "profile" in extra:
        click.echo("\n" + pyspy.render(extra["profile"]))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rows", type=click.IntRange(min=1000), default=2_000_000, show_default=True, help="Rows to seed.")
@click.option("--quick", is_flag=True, help="200,000 rows: a smoke run in well under a minute.")
@click.option("--parts", "parts_", default=",".join(PARTS), show_default=True, help="Comma-separated parts to run.")
@click.option("--batch-size", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Run each part's baseline and tool this many times (query: once); the best time of each counts "
                   "(single runs of either side varied by a third on the 2-core machine).")
@click.option("--rss-scaling", is_flag=True, help="Also measure the archiver's peak RSS at 1M, 4M and 10M rows (slower: ~5 min more).")
@click.option("--profile", is_flag=True, help="Also run the archiver once more under py-spy and summarise where its time goes.")
@click.option("--keep", is_flag=True, help="Keep the databases and the work directory for inspection.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              default=REPO / "bench" / "results" / "latest.json", show_default=True)
def main(rows: int, quick: bool, parts_: str, batch_size: int, repeat: int, rss_scaling: bool, profile: bool,
         keep: bool, output: Path) -> None:
    """Time the archiver (and restore, validate) against plain psql/zstd/boto3 baselines."""
    parts = parse_parts(parts_)
    rows = 200_000 if quick else rows
    dsn = os.environ.get("ARCHIVER_BENCH_DSN", DEFAULT_DSN)
    version = preflight(dsn)
    load_before = os.getloadavg()[0]  # other work on the machine skews every timing
    work = Path(tempfile.mkdtemp(prefix="pg-archiver-bench-"))
    started = time.monotonic()
    try:
        with databases(dsn, keep=keep) as dbs, moto_endpoint() as endpoint:
            click.echo(f"seeding {rows:,} rows ...", err=True)
            seeded = dbs.seed(rows=rows)
            click.echo(f"seeded in {seeded.seconds:.1f}s: {seeded.eligible:,} rows older than 90 days", err=True)
            ctx = Context(dbs=dbs, seeded=seeded, endpoint=endpoint, client=s3_client(endpoint), work=work,
                          batch_size=batch_size, profile=profile)
            results, extra = run_parts(ctx, parts, rss_scaling=rss_scaling, repeat=repeat)
    finally:
        if keep:
            click.echo(f"kept the work directory {work}", err=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    load = (load_before, os.getloadavg()[0])
    click.echo(f"\n{rows:,} rows seeded, {seeded.eligible:,} eligible; batch_size {batch_size}; PostgreSQL {version}; "
               f"{os.cpu_count()} CPUs; load average {load[0]:.1f} before, {load[1]:.1f} after\n")
    if load_before > 1:
        click.echo("note: the machine was busy before the benchmark started; timings are noisy, rerun when it is idle\n")
    click.echo(table(results))
    if server := server_table(results):
        click.echo("\nserver side of each archive phase (WAL is the cluster's; CPU is every PostgreSQL server process's):")
        click.echo(server)
    for r in results:
        if r.extra.get("s3_requests_per_object") is not None:
            ops = ", ".join(f"{op} {n}" for op, n in sorted(r.extra["s3_requests"].items(), key=lambda x: -x[1]))
            verb = "expired" if r.name == "expire" else "archived"
            click.echo(f"\n{r.name}: {r.extra['s3_requests_per_object']:.2f} S3 requests per {verb} object "
                       f"({r.extra['objects']} objects; {ops})")
            if r.extra.get("baseline_requests") is not None:
                click.echo(f"  baseline: {r.extra['baseline_requests']} requests (list pages and DeleteObjects of 1,000)")
    print_extra(extra)
    write_json(output, {
        "created_at": datetime.now(timezone.utc).isoformat(), "rows": rows, "eligible": seeded.eligible,
        "batch_size": batch_size, "repeat": repeat, "seed_seconds": seeded.seconds, "total_seconds": time.monotonic() - started,
        "machine": {"cpus": os.cpu_count(), "load_average_before_after": load, "python": platform.python_version(),
                    "postgresql": version},
        "parts": [r.to_json() for r in results], **extra})
    click.echo(f"\nresults written to {output}")
    sys.exit(1 if any(r.status == "failed" for r in results) else 0)


if __name__ == "__main__":
    main()
