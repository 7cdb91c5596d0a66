"""Side-by-side: best tuner template kernel vs naive vs OpenBLAS (1 thread) on the linear cases.

    taskset -c 1 .venv/bin/python benchmarks/bench_linear.py [--rounds N] [--search-rounds N]

1. search: a shortlist of template knob combinations (every register tile and K-block
   of the defaults' neighbourhood; --all: a seeded random sample of 40) is built through
   ratchetloop.harness, one worker each under one driver, and timed interleaved for
   --search-rounds; the lowest geometric mean over cases of median per-call time wins;
2. measure: the winner is re-measured in a fresh driver, interleaved with naive and with
   numpy's own OpenBLAS sgemm linked into a worker (benchmarks/linear_openblas.c: same
   sandbox, per-call buffers and estimator as the kernels), so the figures printed never
   come from the rounds that chose the winner (no winner's curse) and every
   implementation has the same estimator: the median over rounds of one per-call sample
   (thread CPU time, a batch of >= --batch-ms, default 8 ms) per round. numpy from
   Python is timed after every round too, for reference (it pays call overhead but
   reuses warm buffers).
"""

from __future__ import annotations

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import kernelbench as kb  # first: pins BLAS to one thread, unsets OPENBLAS_CORETYPE/L2_SIZE
import numpy as np  # noqa: E402
from bench_roofline import (  # noqa: E402
    LINEAR,
    experiment,
    linear_numpy,
    linear_openblas,
    linear_shortlist,
    linear_suite,
)

from ratchetloop.benchlock import bench_lock  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--search-rounds", type=int, default=3)
    ap.add_argument("--batch-ms", type=float, default=8.0,
                    help="shortest timed batch when re-measuring (default 8; the loop's "
                    "harness uses 2, where a batch's first call, finding the weights "
                    "evicted by the other workers' batches, weighs more)")
    ap.add_argument("--all", action="store_true",
                    help="search a random sample of 40 combinations besides the shortlist")
    args = ap.parse_args()
    template = kb.load(LINEAR / "template.py", "linear_template")
    target = kb.load(LINEAR / "eval.py", "linear_eval").SPEC.target
    suite, _ = linear_suite(False)
    combos = linear_shortlist(template)
    if args.all:
        combos += random.Random(1).sample(template.combinations(), 40)
    print(kb.blas_info() + f"; numpy {np.__version__}")
    with bench_lock("linear-bench"), tempfile.TemporaryDirectory(prefix="bench-linear-") as t:
        work = Path(t)
        knobs, s = experiment("linear", target, [LINEAR / "driver.c"],
                              (LINEAR / "naive.c").read_text(), template, combos, suite,
                              linear_numpy, work, args, linear_openblas())
    ref = "OpenBLAS" if "OpenBLAS" in next(iter(s.values())) else "numpy"
    print(f"re-measured in a fresh driver: {args.rounds} interleaved rounds, medians (us)")
    print(f"{'case':<15}{'shape BTxC->OC':>18}{'naive us':>11}{'tuned us':>10}"
          f"{'speedup':>9}{ref + ' us':>13}{'numpy us':>10}{'tuned/' + ref:>16}")
    tot = {"naive": 0.0, "tuned": 0.0, ref: 0.0, "numpy": 0.0}
    for name, (B, T, C, OC, _) in suite:
        med = {m: statistics.median(v) for m, v in s[name].items()}
        for m in tot:
            tot[m] += med[m]
        print(f"{name:<15}{f'{B * T}x{C}->{OC}':>18}{med['naive']:>11.1f}{med['tuned']:>10.1f}"
              f"{med['naive'] / med['tuned']:>8.1f}x{med[ref]:>13.1f}{med['numpy']:>10.1f}"
              f"{med['tuned'] / med[ref]:>15.2f}x")
    print(f"{'suite total':<33}{tot['naive']:>11.1f}{tot['tuned']:>10.1f}"
          f"{tot['naive'] / tot['tuned']:>8.1f}x{tot[ref]:>13.1f}{tot['numpy']:>10.1f}"
          f"{tot['tuned'] / tot[ref]:>15.2f}x")

if __name__ == "__main__":
    main()
