"""Roofline: tuned kernels and numpy against what one core of this host allows, in one run.

    taskset -c 1 .venv/bin/python benchmarks/bench_roofline.py [--rounds 9] [--search-rounds 3]

1. host: one core's FMA peak (24 AVX-512 / 12 AVX2 accumulators) and read bandwidth from
   a working set in L2 and in L3, measured now (C, thread CPU time);
2. per experiment (linear, attention): a shortlist of template combinations timed
   interleaved for --search-rounds; the best by suite total is then re-measured in a fresh
   driver, interleaved with naive, and numpy (single-threaded BLAS) is timed after every
   round: one per-call sample per round for everyone, reported as the median;
   Linear also times numpy's own OpenBLAS sgemm as a C implementation inside the harness
   (kernelbench.LINEAR_OPENBLAS): same sandboxed worker, same per-call buffers, same
   interleaving and estimator as the kernels, so "tuned/OpenBLAS" is the fair ratio;
3. every case: tuned GFLOPS, the references' GFLOPS, limit = min(peak, bandwidth x
   arithmetic intensity per cache level: per-call buffers from L3, shared weights from L2
   when they fit), % of limit, and which part binds (compute, L2, L3). GFLOPS count the
   useful work (attention: only the unmasked pairs).
"""

from __future__ import annotations

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import kernelbench as kb  # first: pins BLAS to one thread, unsets OPENBLAS_CORETYPE/L2_SIZE
import numpy as np  # noqa: E402

from ratchetloop.benchlock import bench_lock  # noqa: E402

LINEAR = kb.ROOT / "experiments" / "linear"
ATTENTION = kb.ROOT / "experiments" / "attention"
Work = dict[str, tuple[float, float, float]]  # case -> flops, fresh bytes, resident bytes
CRef = tuple[str, str, list[str]]  # a C reference: name, source, extra linker arguments


def linear_shortlist(template: Any) -> list[dict[str, Any]]:
    d = template.DEFAULTS
    combos = [dict(d)]
    combos += [{**d, "kc": kc} for kc in template.KNOBS["kc"] if kc != d["kc"]]
    combos += [{**d, "tile": t} for t in template.KNOBS["tile"] if t != d["tile"]]
    combos += [{**d, "large": large} for large in template.KNOBS["large"]
               if large != d["large"]]
    combos += [{**d, "pack": 1, "kc": 512}, {**d, "rows": 6, "cols": 4},
               {**d, "simd": "avx2", "rows": 4, "cols": 3}]
    return combos


def linear_suite(with_off: bool) -> tuple[kb.Suite, Work]:
    contract = json.loads((LINEAR / "experiment.json").read_text())
    suite, work = [], {}
    for c in contract["cases"]:
        if not (c.get("enabled", True) or with_off):
            continue
        p = c["params"]
        B, T, C, OC, bias = p["B"], p["T"], p["C"], p["OC"], p.get("bias", 1)
        suite.append((c["name"], [B, T, C, OC, bias]))
        BT = B * T
        weights, io = 4.0 * (OC * C + OC), 4.0 * (BT * C + BT * OC)
        # driver.c: weights up to 256 KiB are per call too (PER_CALL_WEIGHTS_MAX)
        fresh = weights <= 256 * 1024
        work[c["name"]] = (2.0 * BT * C * OC, io + weights * fresh, weights * (not fresh))
    return suite, work


def linear_openblas() -> list[CRef]:
    """numpy's OpenBLAS as a C reference in the harness, when numpy bundles it."""
    lib = kb.numpy_openblas()
    return [("OpenBLAS", kb.LINEAR_OPENBLAS, kb.openblas_link(lib))] if lib else []


def linear_numpy(params: list[int], rng: np.random.Generator) -> Callable[[], object]:
    B, T, C, OC, bias = params
    x = rng.uniform(-1, 1, (B * T, C)).astype(np.float32)
    w = rng.uniform(-1, 1, (OC, C)).astype(np.float32)
    b = rng.uniform(-1, 1, OC).astype(np.float32)
    res = np.empty((B * T, OC), np.float32)

    def call() -> None:
        np.matmul(x, w.T, out=res)
        if bias:
            np.add(res, b, out=res)
    return call


def attention_suite(eval_mod: Any, with_off: bool) -> tuple[kb.Suite, Work]:
    contract = json.loads((ATTENTION / "experiment.json").read_text())
    order = ["B", "H", "Hkv", "T", "S", "D", "causal"]
    suite, work = [], {}
    for c in contract["cases"]:
        if not (c.get("enabled", True) or with_off):
            continue
        p = {k: int(c["params"].get(k, eval_mod.SPEC.param_defaults.get(k, 0))) for k in order}
        suite.append((c["name"], [p[k] for k in order]))
        T, S = p["T"], p["S"]
        pairs = T * (S - T) + T * (T + 1) // 2 if p["causal"] else T * S
        flops = 4.0 * p["B"] * p["H"] * p["D"] * pairs
        bytes_ = 4.0 * (2 * p["B"] * p["H"] * T * p["D"] + 2 * p["B"] * p["Hkv"] * S * p["D"])
        work[c["name"]] = (flops, bytes_, 0.0)  # every attention buffer is per call
    return suite, work


def attention_numpy(params: list[int], rng: np.random.Generator) -> Callable[[], object]:
    """softmax(scale Q K^T + causal mask) V with GQA, as batched matmuls."""
    b, h, hkv, t, s, d, causal = params
    q = rng.uniform(-1, 1, (b, h, t, d)).astype(np.float32)
    k = rng.uniform(-1, 1, (b, hkv, s, d)).astype(np.float32)
    v = rng.uniform(-2, 2, (b, hkv, s, d)).astype(np.float32)
    allowed = (np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)) if causal else None
    scale, g = np.float32(1.0 / np.sqrt(d)), h // hkv

    def call() -> np.ndarray:
        sc = (q.reshape(b, hkv, g * t, d) @ k.transpose(0, 1, 3, 2)).reshape(b, hkv, g, t, s)
        sc *= scale
        if allowed is not None:
            sc = np.where(allowed, sc, -np.inf)
        sc -= sc.max(axis=-1, keepdims=True)
        np.exp(sc, out=sc)
        sc /= sc.sum(axis=-1, keepdims=True)
        return (sc.reshape(b, hkv, g * t, s) @ v).reshape(b, h, t, d)
    return call


def experiment(name: str, target: Any, drivers: list[Path], naive: str, template: Any,
               combos: list[dict[str, Any]], suite: kb.Suite,
               numpy_call: Callable[[list[int], np.random.Generator], Callable[[], object]],
               work: Path, args: argparse.Namespace,
               c_refs: list[CRef] | None = None) -> tuple[dict[str, Any], kb.Samples]:
    """Search the shortlist, then re-measure the winner against naive, the C references
    (interleaved by the driver) and numpy (timed after every round)."""
    labels = [f"t{i}" for i in range(len(combos))]
    built = kb.build(target, drivers, [(lab, template.render(c))
                                       for lab, c in zip(labels, combos, strict=True)],
                     work / f"{name}-search")
    bench = kb.start(built, work, suite, "500 1")
    try:
        names = built.impl_names
        found = kb.rounds(bench, args.search_rounds, suite, names)
    finally:
        bench.close()
    best = combos[names.index(kb.pick_best(found, names))]
    print(f"{name}: searched {len(combos)} combinations x {args.search_rounds} rounds; best "
          + ", ".join(f"{k}={v}" for k, v in best.items()))
    c_refs = c_refs or []
    built = kb.build(target, drivers, [("tuned", template.render(best)), ("naive", naive)]
                     + [(n, src) for n, src, _ in c_refs], work / f"{name}-compare",
                     libs={n: link for n, _, link in c_refs})
    # calibrate: batches of >= batch_ms, warm-up 2, up to 3 batches a round (the minimum
    # batch is the round's sample)
    bench = kb.start(built, work, suite, f"{args.batch_ms * 1000:.0f} 2 "
                     f"{3 * args.batch_ms * 1000:.0f} 3")
    rng = np.random.default_rng(3)
    refs = {case: numpy_call(params, rng) for case, params in suite}
    try:
        samples = kb.interleaved(bench, suite, ["tuned", "naive", *(n for n, _, _ in c_refs)],
                                 args.rounds, refs)
    finally:
        bench.close()
    return best, samples


def table(title: str, host: kb.Host, work: Work, samples: kb.Samples,
          versus: str) -> list[str]:
    """One row per case; GFLOPS for tuned and every reference; the time ratio to versus."""
    refs = [m for m in next(iter(samples.values())) if m not in ("tuned", "naive")]
    lines = [f"{title} ({host.header()})", "",
             "| case | naive us | tuned us | tuned GFLOPS | "
             + "".join(f"{r} GFLOPS | " for r in refs)
             + f"limit GFLOPS | % of limit | binds | tuned/{versus} time |",
             "|---" * (8 + len(refs)) + "|"]
    for case, (flops, fresh, resident) in work.items():
        med = {m: statistics.median(v) for m, v in samples[case].items()}
        limit, binds = host.limit(flops, fresh, resident)
        tuned = flops / med["tuned"] / 1e3
        lines.append(f"| {case} | {med['naive']:.0f} | {med['tuned']:.1f} | {tuned:.1f} | "
                     + "".join(f"{flops / med[r] / 1e3:.1f} | " for r in refs)
                     + f"{limit:.0f} | {100 * tuned / limit:.0f}% | {binds} | "
                     f"{med['tuned'] / med[versus]:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--search-rounds", type=int, default=3)
    ap.add_argument("--batch-ms", type=float, default=8.0,
                    help="shortest timed batch when re-measuring (default 8; the loop's "
                    "harness uses 2, where a batch's first call, finding the weights "
                    "evicted by the other workers' batches, weighs more)")
    ap.add_argument("--with-disabled", action="store_true",
                    help="include the cases experiment.json defines but turns off")
    ap.add_argument("--only", choices=["linear", "attention"])
    ap.add_argument("--attention-sample", type=int, default=6,
                    help="random attention combinations tried besides the defaults")
    args = ap.parse_args()
    print(kb.blas_info() + f"; numpy {np.__version__}")
    out: list[str] = []
    with bench_lock("roofline-bench"), tempfile.TemporaryDirectory(prefix="roofline-") as tmp:
        work = Path(tmp)
        host = kb.measure_host(work)
        print(host.header())
        if args.only in (None, "linear"):
            lin_eval = kb.load(LINEAR / "eval.py", "linear_eval")
            template = kb.load(LINEAR / "template.py", "linear_template")
            suite, flops = linear_suite(args.with_disabled)
            best, samples = experiment(
                "linear", lin_eval.SPEC.target, [LINEAR / "driver.c"],
                (LINEAR / "naive.c").read_text(), template, linear_shortlist(template), suite,
                linear_numpy, work, args, linear_openblas())
            versus = "OpenBLAS" if "OpenBLAS" in next(iter(samples.values())) else "numpy"
            out += table("linear", host, flops, samples, versus) + ["", "tuned: " + ", ".join(
                f"{k}={v}" for k, v in best.items()), ""]
        if args.only in (None, "attention"):
            att_eval = kb.load(ATTENTION / "eval.py", "attention_eval")
            template = kb.load(ATTENTION / "template.py", "attention_template")
            drivers = [ATTENTION / "driver.c"]
            if hasattr(att_eval, "shapes_source"):
                (work / "attn_shapes.c").write_text(att_eval.shapes_source([]))
                drivers.append(work / "attn_shapes.c")
            suite, flops = attention_suite(att_eval, args.with_disabled)
            combos = [dict(template.DEFAULTS)] + random.Random(1).sample(
                template.combinations(), args.attention_sample)
            best, samples = experiment(
                "attention", att_eval.SPEC.target, drivers,
                (ATTENTION / "naive.c").read_text(), template, combos, suite,
                attention_numpy, work, args)
            out += table("attention", host, flops, samples, "numpy") + ["", "tuned: " + ", ".join(
                f"{k}={v}" for k, v in best.items()), ""]
    print(f"\n{args.rounds} interleaved rounds per experiment; medians of per-round "
          "per-call thread CPU time\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
