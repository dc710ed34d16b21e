"""State shared by the parts of one benchmark run: the seeded template, the S3 endpoint, and what
the archive part leaves behind for restore and validate (its archives, its database, its export)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import baseline
from bench.env import BUCKET, PYTHON, Measured, measure, write_config
from bench.pgstats import ServerCost, ServerProbe
from bench.seed import Databases, Seeded


@dataclass
class Archived:
    """The archiver's run that restore and validate work on."""

    dsn: str
    config: Path
    bucket: str
    run: Measured
    server: ServerCost | None = None  # WAL, dead tuples and server CPU of the run


@dataclass
class Context:
    dbs: Databases
    seeded: Seeded
    endpoint: str
    client: Any
    work: Path
    batch_size: int
    profile: bool = False
    archived: Archived | None = None
    export_file: Path | None = None
    #: The same rows in a monthly-partitioned table (the `partitions` part seeds it).
    partitioned: Seeded | None = None

    def fresh_copy(self, suffix: str, *, empty: bool = False, seeded: Seeded | None = None) -> str:
        """A new database holding the seeded table (or an empty copy of it); returns its DSN."""
        dsn = self.dbs.dsn(self.dbs.copy(seeded or self.seeded, suffix))
        if empty:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE audit_logs")
        return dsn

    def bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def config(self, name: str, dsn: str, bucket: str, table_options: dict[str, Any] | None = None) -> Path:
        return write_config(self.work / f"{name}.yaml", dsn=dsn, endpoint=self.endpoint, bucket=bucket,
                            batch_size=self.batch_size, table_options=table_options)

    def exported(self) -> Path:
        """The baseline's zstd export of the eligible rows (made untimed if the archive part did not run)."""
        if self.export_file is None:
            path = self.work / "baseline.tsv.zst"
            baseline.export(self.dbs.dsn(self.seeded.template), self.seeded.cutoff_sql, path)
            self.export_file = path
        return self.export_file

    def run_archiver(self, dsn: str, *, bucket: str = BUCKET, name: str = "archiver",
                     table_options: dict[str, Any] | None = None, probe: bool = False) -> Archived:
        """One archiver run; with probe, also what it cost the server (bench/pgstats.py), measured
        around the run after the checkpoint."""
        cfg = self.config(name, dsn, bucket, table_options)
        baseline.checkpoint(dsn)
        server = ServerProbe(dsn).start() if probe else None
        run = measure([PYTHON, "-m", "archiver.main", "--config", str(cfg)], log=self.work / name)
        return Archived(dsn, cfg, bucket, run, server.finish() if server else None)
