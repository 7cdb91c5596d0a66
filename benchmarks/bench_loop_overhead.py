"""The loop's own cost per iteration: wall time minus proposer time minus evaluation time.

Copies an experiment into a throwaway git repo, runs the real loop (tuner by default) for a
few iterations, and reads the per-phase timings every attempt records in runs/<n>/. The
iteration's wall time is taken by a reporter, from the first phase of an iteration to its
outcome (so it includes the state saved after attempt.json); the one record commit a run
makes at its end is timed separately.

    python benchmarks/bench_loop_overhead.py [--experiment fib] [--iterations 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ratchetloop import experiment as experiment_mod  # noqa: E402
from ratchetloop.loop import Options, Outcome, QuietReporter, run_loop  # noqa: E402
from ratchetloop.scores import Scores  # noqa: E402


class Clock(QuietReporter):
    """Wall time of each iteration, first phase to outcome; and when the last one ended."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.wall: dict[int, float] = {}
        self.last_outcome = 0.0

    def phase(self, iteration: int, name: str) -> None:
        self.started.setdefault(iteration, time.monotonic())

    def outcome(self, outcome: Outcome, scores: Scores) -> None:
        self.last_outcome = time.monotonic()
        self.wall[outcome.iteration] = self.last_outcome - self.started[outcome.iteration]
from ratchetloop.proposers import registry  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experiment", default="fib")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--model", default="tuner")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        shutil.copytree(ROOT / "experiments" / args.experiment, repo / args.experiment,
                        ignore=shutil.ignore_patterns("runs", "winners", "SCORES.*", "MEMORY.*"))
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
            subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *cmd],
                           cwd=repo, check=True)
        exp = experiment_mod.load(repo / args.experiment)
        proposer = registry.resolve(args.model, exp)
        clock = Clock()
        start = time.monotonic()
        summary = run_loop(exp, proposer, Options(iterations=args.iterations, drift_every=0),
                           clock)
        end = time.monotonic()
        wall = end - start
        records = sorted((exp.root / "runs").glob("*/attempt.json"))
        rows = [json.loads(p.read_text()) for p in records]
    print(f"experiment {args.experiment}, proposer {args.model}, {len(rows)} attempts,"
          f" {wall:.1f}s wall including the seed measurement ({summary.stop_reason})")
    print(f"{'#':>3} {'status':<17} {'total s':>8} {'propose s':>10} {'eval s':>8} {'loop ms':>8}")
    overheads = []
    for r in rows:
        sec = r["seconds"]
        total = clock.wall[r["iteration"]]
        loop_ms = 1000 * (total - sec.get("propose", 0) - sec.get("evaluate", 0))
        overheads.append(loop_ms)
        print(f"{r['iteration']:>3} {r['status']:<17} {total:>8.3f}"
              f" {sec.get('propose', 0):>10.3f} {sec.get('evaluate', 0):>8.3f} {loop_ms:>8.1f}")
    if overheads:
        print(f"loop overhead per iteration: median {statistics.median(overheads):.1f} ms,"
              f" max {max(overheads):.1f} ms (prompt, extraction, dedup, security, statistics,"
              " state writes, git commits)")
    accepted = [o for r, o in zip(rows, overheads, strict=True) if r["status"].startswith("acc")]
    rejected = [o for r, o in zip(rows, overheads, strict=True) if r["status"] == "rejected"]
    for label, values in (("accepted", accepted), ("rejected", rejected)):
        if values:
            print(f"  {label}: median {statistics.median(values):.1f} ms over {len(values)}")
    print(f"end of run (the one record commit of SCORES/MEMORY/winners): "
          f"{1000 * (end - clock.last_outcome):.1f} ms")


if __name__ == "__main__":
    main()
