"""`make soak` (issue 31): N cycles of archiver runs against a 200k-row table while a writer inserts,
updates and deletes rows; each cycle kills the archiver with SIGKILL at a random moment (most of
them), may overlap a second archiver, and may cut S3 or stall it (tests/tcp_proxy.py in front
of moto's server). Every `--check-every` cycles and at the end, the writer stops, one clean run
finishes what the kills left, and an accounting independent of the archiver's code
(scripts/soak_check.py) checks that every row ever inserted and not deleted by the writer is in
table ∪ archive exactly once, with the writer's last update. Prints

    cycles N, rows archived M, lost 0, duplicated 0

and exits 1 on any loss, duplicate, lost update or hung run. Seeded: the same --seed draws the same
plans and the same writer operations (what a run has done when it is killed depends on the
machine). Not part of CI or of pytest (scripts/ is not collected)."""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter

from soak_check import Accounting, account
from soak_cycle import clean_run, plan, run
from soak_env import Env, environment, retention, write_config
from soak_writer import Writer


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--cycles", type=int, default=200, help="cycles to run [200]")
    ap.add_argument("--seed", type=int, default=31, help="seed of every random choice [31]")
    ap.add_argument("--rows", type=int, default=200_000, help="rows seeded in the table [200000]")
    ap.add_argument("--writer-rate", type=float, default=40.0, help="writer statements per second [40]")
    ap.add_argument("--check-every", type=int, default=50, help="also check after every N cycles; 0: at the end only [50]")
    ap.add_argument("--run-timeout", type=float, default=180.0, help="a run still going after this many seconds is hung [180]")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, checkpoints, fallback)")
    ap.add_argument("--quiet", action="store_true", help="no line per cycle")
    return ap.parse_args(argv)


class Totals:
    def __init__(self) -> None:
        self.exits: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.hung = 0
        self.clean_failures: list[str] = []

    def line(self, writer: Writer) -> str:
        exits = ", ".join(f"{k} {v}" for k, v in sorted(self.exits.items()))
        faults = ", ".join(f"{k} {v}" for k, v in sorted({**self.faults, "kill -9": self.exits["killed"] - self.hung}.items()))
        w = writer.counts
        return (f"faults: {faults}; archiver runs by exit: {exits}; hung runs {self.hung}; writer: "
                f"{w['insert']} inserts, {w['update']} updates, {w['delete']} deletes ({w['missed']} found the row gone)")


def check(env: Env, writer: Writer, totals: Totals, *, at: int, run_timeout: float) -> Accounting:
    """Stop the writer, let one clean run finish what the kills left (a second if the first did
    not end with exit 0 and an empty fallback directory), then account."""
    writer.stop()
    for attempt in (1, 2):
        code = clean_run(env, name=f"check-{at:04d}-{attempt}", run_timeout=run_timeout)
        acc = account(env.s3(), env.dsn, writer.expected, env.fallback)
        if code == 0 and not acc.fallback_files:
            break
        totals.clean_failures.append(f"cycle {at}: clean run {attempt} exit {code}")
    return acc


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rng = random.Random(args.seed)
    totals = Totals()
    began = time.monotonic()
    print(f"soak: seed {args.seed}, {args.cycles} cycles, {args.rows} rows, writer {args.writer_rate}/s", flush=True)
    with environment(rows=args.rows, keep=args.keep) as env:
        writer = Writer(env.dsn, seed=args.seed + 1, seeded_rows=args.rows, rate=args.writer_rate)
        writer.start()
        acc = Accounting()
        for cycle in range(1, args.cycles + 1):
            p = plan(rng)
            write_config(env, retention_days=retention(cycle, args.cycles))
            out = run(env, p, cycle=cycle, run_timeout=args.run_timeout)
            totals.exits.update(out.exits)
            totals.hung += out.hung
            totals.faults.update(k for k, on in (("second archiver", p.second_at is not None),
                                                 (f"S3 {p.s3_fault}", p.s3_fault is not None)) if on)
            if not args.quiet:
                print(f"cycle {cycle}: {p.describe()}: {dict(out.exits)}", flush=True)
            last = cycle == args.cycles
            if last or (args.check_every and cycle % args.check_every == 0):
                acc = check(env, writer, totals, at=cycle, run_timeout=args.run_timeout)
                print(f"check after cycle {cycle}: {acc.line(cycle)}", flush=True)
                if not acc.ok or last:
                    args.cycles = cycle
                    break
                writer.start()
        print(acc.line(args.cycles))
        print(acc.details())
        print(totals.line(writer))
        for failure in totals.clean_failures:
            print(f"  {failure}")
        print(f"wall time {time.monotonic() - began:.0f}s")
    return 0 if acc.ok and not totals.hung and not totals.clean_failures else 1


if __name__ == "__main__":
    sys.exit(main())
