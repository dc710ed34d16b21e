"""One soak cycle (scripts/soak.py): a plan drawn from the seeded random generator (when to kill -9
the archiver, whether a second archiver overlaps it, when S3 is cut or stalls and for how long),
then its run. The plan is reproducible from the seed; what the archiver has done at a given
millisecond is not (it depends on the machine's speed), which is the point of killing it there."""
from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

from soak_env import Env, kill9, start_archiver


@dataclass(frozen=True)
class Plan:
    kill_at: float | None  # seconds after the start; None: the run ends by itself
    second_at: float | None  # a second archiver starts then (same config: overlapping cron runs)
    second_kill_at: float | None
    s3_fault: str | None  # "cut" | "stall"
    fault_at: float
    fault_for: float

    def describe(self) -> str:
        parts = [f"kill -9 at {self.kill_at:.2f}s" if self.kill_at is not None else "no kill"]
        if self.second_at is not None:
            end = f", killed at {self.second_kill_at:.2f}s" if self.second_kill_at is not None else ""
            parts.append(f"second archiver at {self.second_at:.2f}s{end}")
        if self.s3_fault:
            parts.append(f"S3 {self.s3_fault} at {self.fault_at:.2f}s for {self.fault_for:.2f}s")
        return ", ".join(parts)


def plan(rng: random.Random) -> Plan:
    """Most cycles kill; a third overlap a second archiver; S3 is cut in one in four, stalls in one
    in five. Every draw is made whatever the branch, so one cycle's choices never shift the next's."""
    kill, kill_at = rng.random() < 0.8, rng.uniform(0.3, 6.0)
    second, second_at, second_kill, second_kill_at = rng.random() < 0.35, rng.uniform(0, 3), rng.random() < 0.5, rng.uniform(0.5, 6)
    fault_draw, fault_at, fault_for = rng.random(), rng.uniform(0, 4), rng.uniform(0.5, 8)
    fault = "cut" if fault_draw < 0.25 else "stall" if fault_draw < 0.45 else None
    return Plan(kill_at if kill else None, second_at if second else None,
                (second_at + second_kill_at) if second and second_kill else None, fault, fault_at, fault_for)


@dataclass
class Outcome:
    exits: Counter[str]  # "0", "1", "3", "killed", "hung" -> runs
    hung: int = 0


def run(env: Env, p: Plan, *, cycle: int, run_timeout: float) -> Outcome:
    """Start the archiver(s), apply the plan's faults on their timeline, wait for them to end (a run
    past `run_timeout` is killed and counted as hung), then bring S3 back."""
    first = start_archiver(env, f"cycle-{cycle:04d}-a")
    started = time.monotonic()
    procs: dict[str, subprocess.Popen[bytes]] = {"a": first}
    killed: set[str] = set()
    fault_on = fault_off = False
    outcome = Outcome(Counter())
    try:
        while any(proc.poll() is None for proc in procs.values()) or (p.second_at is not None and "b" not in procs):
            now = time.monotonic() - started
            if p.second_at is not None and "b" not in procs and now >= p.second_at:
                procs["b"] = start_archiver(env, f"cycle-{cycle:04d}-b")
            if p.s3_fault and not fault_on and now >= p.fault_at:
                env.proxy.cut() if p.s3_fault == "cut" else env.proxy.stall()
                fault_on = True
            if fault_on and not fault_off and now >= p.fault_at + p.fault_for:
                env.proxy.restore()
                fault_off = True
            for name, at in (("a", p.kill_at), ("b", p.second_kill_at)):
                if at is not None and now >= at and name in procs and procs[name].poll() is None:
                    kill9(procs[name])
                    killed.add(name)
            if now > run_timeout:
                for name, proc in procs.items():
                    if proc.poll() is None:
                        kill9(proc)
                        outcome.hung += 1
                        killed.add(name)
                break
            time.sleep(0.02)
    finally:
        for proc in procs.values():
            kill9(proc)
        env.proxy.restore()
    for name, proc in procs.items():
        outcome.exits["killed" if name in killed else str(proc.returncode)] += 1
    return outcome


def clean_run(env: Env, *, name: str, run_timeout: float) -> int:
    """One run with S3 up and no fault; its exit code (a run past `run_timeout` is killed: -9)."""
    env.proxy.restore()
    proc = start_archiver(env, name)
    try:
        return proc.wait(timeout=run_timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        return -9
