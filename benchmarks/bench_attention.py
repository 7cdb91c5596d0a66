"""Tuned attention vs naive vs numpy, side by side in one run.

    .venv/bin/python benchmarks/bench_attention.py [--rounds 10] [--no-search] [--ctx1024]

1. search: every tuner knob combination gets a worker, one driver per simd path
   (the shared C harness renames each symbol) and timed interleaved for a few rounds; the
   combination with the lowest full-suite median wins, and each case's fastest is reported
   (the per-case specialists a tuner run could keep);
2. compare: the winner and naive.c under one driver, interleaved paired rounds; after every
   round the numpy reference (single-threaded BLAS) is timed on the same shapes.
Speedup = median over rounds of naive/tuned in the same round. Every time is the thread's
CPU time per call (the harness default; numpy measured the same way, min of 3 batch means),
and the whole run holds the host-wide benchmark lock.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ratchetloop.benchlock import bench_lock  # noqa: E402
from ratchetloop.harness import cbuild  # noqa: E402
from ratchetloop.harness.cbuild import Impl  # noqa: E402
from ratchetloop.harness.timing import BenchProcess  # noqa: E402

EXP = Path(__file__).resolve().parents[1] / "experiments" / "attention"
PARAMS = ["B", "H", "Hkv", "T", "S", "D", "causal"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"attention_{name}", EXP / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVAL = load("eval")
TEMPLATE = load("template")


def cases(with_1024: bool) -> list[tuple[str, list[int]]]:
    contract = json.loads((EXP / "experiment.json").read_text())
    return [(c["name"], [int(c["params"].get(p, EVAL.SPEC.param_defaults.get(p, 0)))
                         for p in PARAMS])
            for c in contract["cases"] if c.get("enabled", True) or with_1024]


def build(sources: list[tuple[str, str]], work: Path, tag: str) -> cbuild.Build:
    """One driver and one optimised worker per source (index 0 plays 'candidate')."""
    folder = work / tag
    folder.mkdir(parents=True)
    impls = []
    for i, (name, text) in enumerate(sources):
        path = folder / f"impl{i}.c"
        path.write_text(text)
        impls.append(Impl("candidate" if i == 0 else name, path))
    shapes = folder / "attn_shapes.c"
    shapes.write_text(EVAL.shapes_source([]))
    return cbuild.build(EVAL.SPEC.target, impls, [EXP / "driver.c", shapes], folder / "b",
                        check=False)


def start(built: cbuild.Build, work: Path, suite: list[tuple[str, list[int]]],
          calibrate: str) -> BenchProcess:
    """Workers started, cases added, results checked in full, calibrated
    (`min_us warm budget_us max_batches`)."""
    bench = BenchProcess(built.driver, cwd=work)
    answers = []
    for w in built.workers:
        answers += bench.command(f"impl {w.name} {w.binary}", 60)
    answers += bench.command("seed 7", 60)
    for name, params in suite:
        answers += bench.command(f"case {name} " + " ".join(map(str, params)), 60)
    answers += bench.command("check", 600)
    answers += bench.command(f"calibrate {calibrate}", 600)
    bad = [a for a in answers if a.startswith("fail")]
    if bad:
        raise SystemExit(f"result check failed: {bad[:3]}")
    return bench


def rounds(bench: BenchProcess, n: int, suite: list[tuple[str, list[int]]],
           names: list[str]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {c: {m: [] for m in names} for c, _ in suite}
    for line in bench.command(f"rounds {n}", 1200):
        _, ci, impl, us = line.split()
        out[suite[int(ci)][0]][names[int(impl)]].append(float(us))
    return out


def search(work: Path, suite: list[tuple[str, list[int]]], n: int) -> dict[str, Any]:
    combos = TEMPLATE.combinations()
    label = {i: ",".join(f"{k}={v}" for k, v in c.items()) for i, c in enumerate(combos)}
    medians: dict[str, dict[str, float]] = {}
    for simd in TEMPLATE.KNOBS["simd"]:
        group = [i for i, c in enumerate(combos) if c["simd"] == simd]
        t0 = time.monotonic()
        built = build([(label[i], TEMPLATE.render(combos[i])) for i in group], work, simd)
        names = [label[i] for i in group]
        bench = start(built, work, suite, "500 1")
        try:
            samples = rounds(bench, n, suite, names)
        finally:
            bench.close()
        for case, by in samples.items():
            for name, vals in by.items():
                medians.setdefault(name, {})[case] = statistics.median(vals)
        print(f"  searched {len(group)} {simd} combinations in {time.monotonic() - t0:.1f}s")
    best = min(medians, key=lambda m: sum(medians[m].values()))
    print(f"  best overall: {best}  (suite median {sum(medians[best].values()):.1f} us)")
    for case, _ in suite:
        fastest = min(medians, key=lambda m: medians[m][case])
        note = "" if fastest == best else (f"  ({medians[best][case] / medians[fastest][case]:.2f}x"
                                           " faster than the overall best on this case)")
        print(f"  fastest on {case:8s}: {fastest}  {medians[fastest][case]:.1f} us{note}")
    return combos[[label[i] for i in range(len(combos))].index(best)]


def numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                    allowed: np.ndarray | None) -> np.ndarray:
    """softmax(scale Q K^T + mask) V with GQA, as batched matmuls (the same contract)."""
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = h // hkv
    scores = (q.reshape(b, hkv, g * t, d) @ k.transpose(0, 1, 3, 2)).reshape(b, hkv, g, t, s)
    scores *= scale
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return (scores.reshape(b, hkv, g * t, s) @ v).reshape(b, h, t, d)


def numpy_case(params: list[int], rng: np.random.Generator) -> tuple[Any, ...]:
    b, h, hkv, t, s, d, causal = params
    q = rng.uniform(-1, 1, (b, h, t, d)).astype(np.float32)
    k = rng.uniform(-1, 1, (b, hkv, s, d)).astype(np.float32)
    v = rng.uniform(-2, 2, (b, hkv, s, d)).astype(np.float32)
    allowed = (np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)) if causal else None
    return q, k, v, np.float32(1.0 / np.sqrt(d)), allowed


def numpy_check(rng: np.random.Generator) -> float:
    """The numpy path against a float64 loop on a small GQA causal shape with T != S."""
    q, k, v, scale, allowed = numpy_case([2, 6, 2, 5, 9, 7, 1], rng)
    got = numpy_attention(q, k, v, scale, allowed)
    want = np.zeros_like(got, dtype=np.float64)
    for bi in range(2):
        for hi in range(6):
            kv = hi // 3
            for i in range(5):
                logits = k[bi, kv].astype(np.float64) @ q[bi, hi, i].astype(np.float64) * scale
                logits[~allowed[i]] = -np.inf
                p = np.exp(logits - logits.max())
                want[bi, hi, i] = p @ v[bi, kv] / p.sum()
    return float(np.abs(got - want).max())


def time_numpy(args: tuple[Any, ...], min_us: float = 2000.0, batches: int = 3) -> float:
    """Like the harness sample: CPU time (the harness reads a single-threaded worker's),
    min over batch means of >= min_us each."""
    reps = 1
    while True:
        t0 = time.thread_time_ns()
        for _ in range(reps):
            numpy_attention(*args)
        us = (time.thread_time_ns() - t0) / 1e3
        if us >= min_us:
            break
        reps *= 2
    best = us / reps
    for _ in range(batches - 1):
        t0 = time.thread_time_ns()
        for _ in range(reps):
            numpy_attention(*args)
        best = min(best, (time.thread_time_ns() - t0) / 1e3 / reps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--search-rounds", type=int, default=3)
    ap.add_argument("--no-search", action="store_true", help="use the template defaults")
    ap.add_argument("--ctx1024", action="store_true", help="include the disabled 1024 case")
    args = ap.parse_args()
    suite = cases(args.ctx1024)
    rng = np.random.default_rng(3)
    print(f"numpy {np.__version__}; BLAS threads: OPENBLAS_NUM_THREADS="
          f"{os.environ['OPENBLAS_NUM_THREADS']}; numpy vs float64 loop max |err| "
          f"{numpy_check(rng):.2e}")
    with bench_lock("attention-bench"), \
            tempfile.TemporaryDirectory(prefix="bench-attention-") as tmp:
        work = Path(tmp)
        if args.no_search:
            knobs = dict(TEMPLATE.DEFAULTS)
        else:
            print(f"search: {len(TEMPLATE.combinations())} combinations x "
                  f"{args.search_rounds} rounds")
            knobs = search(work, suite, args.search_rounds)
        print("tuned:", ", ".join(f"{k}={v}" for k, v in knobs.items()))
        built = build([("tuned", TEMPLATE.render(knobs)),
                       ("naive", (EXP / "naive.c").read_text())], work, "compare")
        names = ["tuned", "naive"]
        bench = start(built, work, suite, "2000 2 6000 3")
        inputs = {name: numpy_case(params, rng) for name, params in suite}
        c_samples: dict[str, dict[str, list[float]]] = {c: {m: [] for m in names}
                                                         for c, _ in suite}
        np_samples: dict[str, list[float]] = {c: [] for c, _ in suite}
        try:
            for _ in range(args.rounds):
                for case, by in rounds(bench, 1, suite, names).items():
                    for m in names:
                        c_samples[case][m] += by[m]
                for case, _ in suite:
                    np_samples[case].append(time_numpy(inputs[case]))
        finally:
            bench.close()
    print(f"\n{args.rounds} interleaved rounds (us per call, medians)")
    print(f"{'case':8s} {'naive':>10s} {'tuned':>10s} {'speedup':>8s} {'numpy':>10s}"
          f" {'tuned/numpy':>12s}")
    tot = {"naive": 0.0, "tuned": 0.0, "numpy": 0.0}
    for case, _ in suite:
        nv, tv = c_samples[case]["naive"], c_samples[case]["tuned"]
        speed = statistics.median(a / b for a, b in zip(nv, tv, strict=True))
        mn, mt, mp = statistics.median(nv), statistics.median(tv), statistics.median(
            np_samples[case])
        tot["naive"] += mn
        tot["tuned"] += mt
        tot["numpy"] += mp
        print(f"{case:8s} {mn:10.1f} {mt:10.1f} {speed:7.2f}x {mp:10.1f} {mt / mp:11.2f}x")
    print(f"{'suite':8s} {tot['naive']:10.1f} {tot['tuned']:10.1f} "
          f"{tot['naive'] / tot['tuned']:7.2f}x {tot['numpy']:10.1f} "
          f"{tot['tuned'] / tot['numpy']:11.2f}x")


if __name__ == "__main__":
    main()
