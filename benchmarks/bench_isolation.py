"""What the evaluator's isolation costs: the same evaluation, before and after, one run.

"before" is the harness at an older commit (default: the last one with a single benchmark
process holding the candidate and its references, in-process timing, stdout verdict),
extracted with `git archive` into a temp dir; "after" is this checkout (a trusted driver,
one seccomp-filtered worker per implementation, per-call slots, every call checked, CPU
clock read from outside, result channel). Each evaluation is the naive kernel against
itself (validation on), with a FIXED number of rounds so both do the same timed work, in a
fresh process; before and after alternate, so drift on this shared host hits both alike.

    .venv/bin/python benchmarks/bench_isolation.py                 # linear, 5 pairs
    .venv/bin/python benchmarks/bench_isolation.py --experiment attention --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "7307640"
ONE_EVAL = r"""
import json, sys, time
from ratchetloop import evaluate, experiment
exp = experiment.load(sys.argv[1])
exp.acceptance = exp.acceptance.model_copy(
    update={"min_rounds": int(sys.argv[3]), "max_rounds": int(sys.argv[3]),
            "batch_rounds": int(sys.argv[3]), "max_seconds": 600})
naive = exp.naive_path.read_text()
start = time.monotonic()
r = evaluate.run_eval(exp, naive, {"best": naive}, seed=int(sys.argv[2]))
print(json.dumps({"ok": r.ok, "wall": time.monotonic() - start, "rounds": r.rounds,
                  "timing": r.info.get("timing_seconds"), "ipc_us": r.info.get("ipc_us"),
                  "failure": r.failure.message if r.failure else None}))
"""


def extract(commit: str, dest: Path) -> Path:
    """src/ and experiments/ of `commit` into dest (no checkout, no work tree touched)."""
    blob = subprocess.run(["git", "archive", "--format=tar", commit, "src", "experiments"],
                          cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def evaluate(tree: Path, experiment: str, seed: int, rounds: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run([sys.executable, "-c", ONE_EVAL,
                           str(tree / "experiments" / experiment), str(seed), str(rounds)],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"evaluation failed in {tree}: {proc.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="linear")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=16, help="fixed timed rounds per evaluation")
    p.add_argument("--before", default=BEFORE, help="commit of the 'before' harness")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        trees = {"before": extract(args.before, Path(tmp) / "before"), "after": ROOT}
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for i in range(args.pairs):
            for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                r = evaluate(trees[name], args.experiment, seed=i, rounds=args.rounds)
                if not r["ok"]:
                    raise SystemExit(f"{name}: evaluation failed: {r['failure']}")
                runs[name].append(r)
                print(f"  pair {i} {name:6}: wall {r['wall']:.2f}s, timing {r['timing']}s, "
                      f"rounds {r['rounds']}", flush=True)
    print(f"\n{args.experiment}, naive vs naive, {args.rounds} rounds, validation on, "
          f"{args.pairs} pairs (medians):\n")
    print("| | whole evaluation (s) | timing phase (s) | build + validation + rest (s) |")
    print("|---|---:|---:|---:|")
    med = {}
    for name, rs in runs.items():
        wall = statistics.median(r["wall"] for r in rs)
        timing = statistics.median(r["timing"] for r in rs)
        med[name] = (wall, timing, wall - timing)
        print(f"| {name} | {wall:.2f} | {timing:.2f} | {wall - timing:.2f} |")
    b, a = med["before"], med["after"]
    print(f"| after / before | x{a[0] / b[0]:.2f} | x{a[1] / b[1]:.2f} | x{a[2] / b[2]:.2f} |")
    ipc = [r["ipc_us"] for r in runs["after"] if r.get("ipc_us") is not None]
    if ipc:
        print(f"\nafter: one driver-worker exchange costs the worker {statistics.median(ipc):.1f}"
              " us of CPU (batches are sized to at least 100x that)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
