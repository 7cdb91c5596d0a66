"""Side-by-side: best tuner template kernel vs naive vs numpy (1 thread) on the linear cases.

    .venv/bin/python benchmarks/bench_linear.py [--rounds N] [--all]

Builds naive.c and 27 template knob combinations (all 192 with --all; at most 63 at once)
through ratchetloop.harness, each into its own worker under one driver, times them
interleaved round by round, picks
the combination with the lowest median suite total, and prints per-case speedups against
naive and the ratio to numpy's single-threaded matmul (out = inp @ W.T + b) on the same
shapes.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy is imported anywhere
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
EXP = ROOT / "experiments" / "linear"

from ratchetloop.experiment import Acceptance  # noqa: E402
from ratchetloop.harness import cbuild  # noqa: E402
from ratchetloop.harness.timing import BenchProcess, measure  # noqa: E402


def shortlist(template) -> list[dict]:
    """Every register-blocking shape with AVX2, O3, oc_outer, plus one of each other choice."""
    base = [{**template.DEFAULTS, "oc_block": ob, "bt_block": bb, "unroll": u}
            for ob in template.KNOBS["oc_block"] for bb in template.KNOBS["bt_block"]
            for u in template.KNOBS["unroll"]]
    return base + [{**template.DEFAULTS, "loop_order": "bt_outer"},
                   {**template.DEFAULTS, "opt": "O2"},
                   {**template.DEFAULTS, "simd": "scalar", "unroll": 2}]


def load_template():
    spec = importlib.util.spec_from_file_location("linear_template", EXP / "template.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numpy_time_us(B: int, T: int, C: int, OC: int, bias: bool, rounds: int) -> float:
    """Median per-call thread CPU time of inp @ W.T + b in float32 (the C kernel's layout).

    Thread CPU time, like the harness's default clock (the CPU time of a single-threaded
    worker process), so a busy host skews neither side."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (B * T, C)).astype(np.float32)
    w = rng.uniform(-1, 1, (OC, C)).astype(np.float32)
    b = rng.uniform(-1, 1, OC).astype(np.float32)
    res = np.empty((B * T, OC), np.float32)

    def call() -> None:
        np.matmul(x, w.T, out=res)
        if bias:
            np.add(res, b, out=res)

    call()
    t0 = time.thread_time()
    call()
    one = max(time.thread_time() - t0, 1e-7)
    reps = max(1, int(1e-3 / one))
    times = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(reps):
            call()
        times.append((time.thread_time() - t0) / reps * 1e6)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--all", action="store_true", help="time every knob combination")
    args = ap.parse_args()
    template = load_template()
    contract = json.loads((EXP / "experiment.json").read_text())
    cases = [(c["name"], [c["params"][k] if k in c["params"] else 1
                          for k in ("B", "T", "C", "OC", "bias")])
             for c in contract["cases"] if c.get("enabled", True)]
    combos = template.combinations() if args.all else shortlist(template)
    work = Path(tempfile.mkdtemp(prefix="bench-linear-"))
    impls = [cbuild.Impl("naive", EXP / "naive.c")]
    for i, knobs in enumerate(combos):
        src = work / f"t{i}.c"
        src.write_text(template.render(knobs))
        impls.append(cbuild.Impl(f"t{i}", src))
    target = cbuild.CTarget("matmul_forward", (
        "void {name}(float* out, const float* inp, const float* weight, const float* bias, "
        "int B, int T, int C, int OC)"))
    t0 = time.monotonic()
    build = cbuild.build(target, impls, [EXP / "driver.c"], work / "build", check=False)
    print(f"built {len(impls)} kernels (one worker each) in {time.monotonic() - t0:.1f}s")
    acc = Acceptance(min_rounds=args.rounds, max_rounds=args.rounds,
                     batch_rounds=args.rounds, max_seconds=600)
    bench = BenchProcess(build.driver, cwd=work)
    try:
        # impl 0 is the "candidate" slot of the protocol: here it is naive, timed with all
        timing = measure(bench, cases, [(w.name, w.binary) for w in build.workers], acc,
                         seed=1, command_timeout=600)
    finally:
        bench.close()
    s = timing.samples
    names = build.impl_names
    totals = {n: statistics.median([sum(s[c][n][i] for c, _ in cases)
                                    for i in range(timing.rounds)]) for n in names}
    best = min(names[1:], key=totals.get)
    knobs = combos[names.index(best) - 1]
    print(f"{timing.rounds} interleaved rounds of {len(names)} kernels in "
          f"{timing.seconds:.1f}s; best combination {best}: "
          + ", ".join(f"{k}={v}" for k, v in knobs.items()))
    print(f"{'case':<15}{'shape BTxC->OC':>18}{'naive us':>11}{'best us':>10}"
          f"{'speedup':>9}{'numpy us':>10}{'best/numpy':>11}")
    for (name, p) in cases:
        B, T, C, OC, bias = p
        naive = statistics.median(s[name]["naive"])
        fast = statistics.median(s[name][best])
        npy = numpy_time_us(B, T, C, OC, bool(bias), args.rounds)
        print(f"{name:<15}{f'{B * T}x{C}->{OC}':>18}{naive:>11.1f}{fast:>10.1f}"
              f"{naive / fast:>8.1f}x{npy:>10.1f}{fast / npy:>10.2f}x")
    print(f"{'suite total':<33}{totals['naive']:>11.1f}{totals[best]:>10.1f}"
          f"{totals['naive'] / totals[best]:>8.1f}x")
    ranked = sorted(names[1:], key=totals.get)[:5]
    print("top 5 by median suite total: " + "; ".join(
        f"{totals[n]:.0f} us " + "/".join(str(v) for v in combos[names.index(n) - 1].values())
        for n in ranked))


if __name__ == "__main__":
    main()
