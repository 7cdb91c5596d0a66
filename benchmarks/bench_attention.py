"""Tuned attention vs naive vs numpy vs PyTorch, against the machine's limit, in one run.

    .venv/bin/python benchmarks/bench_attention.py [--rounds 10] [--search-rounds 3]
        [--search all|host] [--knobs JSON]

1. search: tuner renderings (by default every combination on the host's widest vector
   path; `--search all` for the whole space, `--knobs` to skip the search), each a worker
   of the shared C harness, timed interleaved for a few rounds; the combination with the
   lowest full-suite median wins, and each case's fastest is reported.
2. compare, in a FRESH process (the winner is re-measured on new samples, so the winner's
   curse of step 1 does not flatter it), with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
   removed from that process's environment only: the winner and naive.c under one
   harness driver; after every harness round, numpy (OpenBLAS) and
   `torch.nn.functional.scaled_dot_product_attention` (torch.set_num_threads(1)) on the
   same shapes. One estimator for all: per round and case, the minimum over the harness's
   batch count of batch means, each batch >= 2 ms of process CPU time, every call with
   inputs of its own; the table shows medians over rounds. torch and numpy are first
   checked against the naive C kernel (via ctypes) on every case and on masked GQA
   shapes with T != S, fully hidden rows included.
3. limits, measured in the same process: one core's FP32 FMA peak (AVX-512 where the CPU
   has it, else AVX2), and the L2 and L3 read bandwidth of one core. A case's limit is
   min(peak, bandwidth x FLOPs/byte), the bandwidth being L3's (every call of a batch has
   inputs of its own, so a batch reads most of them from L3) unless a whole 2 ms batch
   of calls (at the peak's speed) fits in L2.

FLOPs, counted once per visible (query row i, key j) pair, n_i keys visible to row i:
    B * H * ( sum_i n_i * (4*D + 5) + T * (D + 1) )
4D = Q.K^T (2D) + P.V (2D); 5 = scale, max, subtract, exp (counted as one), sum; per
row D + 1 = the final 1/l and D multiplies. Causal rows see n_i = i + 1 + (S - T) keys,
so the triangle's hidden half is not counted for anyone. Bytes: Q, K, V read once and
the output written once (4 bytes each).
torch needs the optional extra: `pip install -e '.[bench]'` (a CPU wheel of torch).
"""

from __future__ import annotations

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import kernelbench as kb  # first: pins BLAS to one thread, unsets OPENBLAS_CORETYPE/L2_SIZE
import numpy as np  # noqa: E402

from ratchetloop.benchlock import bench_lock  # noqa: E402
from ratchetloop.harness import cbuild  # noqa: E402
from ratchetloop.harness.timing import BenchProcess  # noqa: E402

EXP = Path(__file__).resolve().parents[1] / "experiments" / "attention"
PARAMS = ["B", "H", "Hkv", "T", "S", "D", "causal"]
MIN_US = 2000.0  # every batch, C or Python, is at least this much CPU time
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
Suite = list[tuple[str, list[int]]]


def load(name: str) -> ModuleType:
    return kb.load(EXP / f"{name}.py", f"attention_{name}")


EVAL = load("eval")
TEMPLATE = load("template")


def cases() -> Suite:
    contract = json.loads((EXP / "experiment.json").read_text())
    return [(c["name"], [int(c["params"].get(p, EVAL.SPEC.param_defaults.get(p, 0)))
                         for p in PARAMS])
            for c in contract["cases"] if c.get("enabled", True)]


def visible_keys(t: int, s: int, causal: int) -> np.ndarray:
    """n_i: keys visible to each query row under the contract's causal rule."""
    if not causal:
        return np.full(t, s)
    return np.clip(np.arange(t) + 1 + (s - t), 0, s)


def flops(params: list[int]) -> float:
    b, h, _, t, s, d, causal = params
    return float(b * h * (visible_keys(t, s, causal).sum() * (4 * d + 5) + t * (d + 1)))


def case_bytes(params: list[int]) -> float:
    b, h, hkv, t, s, d, _ = params
    return 4.0 * (2 * b * h * t * d + 2 * b * hkv * s * d)


# ---------------------------------------------------------------- C builds and rounds

def build(sources: list[tuple[str, str]], work: Path, tag: str) -> cbuild.Build:
    """One driver and one optimised worker per source (index 0 plays 'candidate')."""
    shapes = work / f"{tag}-attn_shapes.c"
    shapes.parent.mkdir(parents=True, exist_ok=True)
    shapes.write_text(EVAL.shapes_source([]))
    return kb.build(EVAL.SPEC.target, [EXP / "driver.c", shapes], sources, work / tag)


def start(built: cbuild.Build, work: Path, suite: Suite, calibrate: str
          ) -> tuple[BenchProcess, dict[str, int]]:
    """Workers started, cases added, results checked in full, calibrated; the bench and
    each case's batches per sample."""
    bench, cal = kb.start_calibrated(built, work, suite, calibrate)
    batches = {suite[int(line.split()[1])][0]: int(line.split()[4])
               for line in cal if line.startswith("reps ")}
    return bench, batches


TIMING_CPU = 1  # the timing phases run on this CPU only (builds use every CPU)


def pin(cpus: set[int] | None) -> None:
    """Pin this process (and what it starts next) to cpus; None = every CPU."""
    os.sched_setaffinity(0, cpus if cpus is not None else set(range(os.cpu_count() or 1)))


def search_space(mode: str) -> list[dict[str, Any]]:
    combos = TEMPLATE.combinations()
    if mode == "all":
        return combos
    widest = "avx512" if host_has_avx512() else "avx2"
    return [c for c in combos if c["simd"] == widest]


def host_has_avx512() -> bool:
    try:
        return " avx512f " in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def search(work: Path, suite: Suite, n: int, mode: str) -> dict[str, Any]:
    """{"best": knobs of the lowest suite median, "specialists": {case: knobs}} for the
    cases whose fastest combination is another one (a tuner run keeps those too)."""
    combos = search_space(mode)
    label = [",".join(f"{k}={v}" for k, v in c.items()) for c in combos]
    medians: dict[str, dict[str, float]] = {}
    groups = [list(range(i, min(i + 40, len(combos)))) for i in range(0, len(combos), 40)]
    t0 = time.monotonic()
    builds = [build([(label[i], TEMPLATE.render(combos[i])) for i in group], work, f"s{gi}")
              for gi, group in enumerate(groups)]  # before the lock: builds time nothing
    print(f"  built {len(combos)} renderings in {time.monotonic() - t0:.1f}s", flush=True)
    with bench_lock("attention-bench"):
        pin({TIMING_CPU})
        for group, built in zip(groups, builds, strict=True):
            t0 = time.monotonic()
            names = [label[i] for i in group]
            bench, _ = start(built, work, suite, "500 1 3000 2")
            try:
                samples = kb.rounds(bench, n, suite, names)
            finally:
                bench.close()
            for case, by in samples.items():
                for name, vals in by.items():
                    medians.setdefault(name, {})[case] = statistics.median(vals)
            print(f"  timed {len(group)} combinations in {time.monotonic() - t0:.1f}s",
                  flush=True)
        pin(None)
    best = min(medians, key=lambda m: sum(medians[m].values()))
    print(f"  best overall: {best}  (suite median {sum(medians[best].values()):.1f} us)")
    specialists = {}
    for case, _ in suite:
        fastest = min(medians, key=lambda m: medians[m][case])
        note = "" if fastest == best else (f"  ({medians[best][case] / medians[fastest][case]:.2f}x"
                                           " faster than the overall best on this case)")
        print(f"  fastest on {case:8s}: {fastest}  {medians[fastest][case]:.1f} us{note}")
        if fastest != best:
            specialists[case] = combos[label.index(fastest)]
    return {"best": combos[label.index(best)], "specialists": specialists}


# ---------------------------------------------------------------- references

def allowed_mask(t: int, s: int, causal: int) -> np.ndarray | None:
    """The contract's visibility: key j visible to query i iff j <= i + (S - T)."""
    if not causal:
        return None
    return np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)


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
    with np.errstate(invalid="ignore"):  # rows that see nothing: NaN here, zeroed below
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
    out = (scores.reshape(b, hkv, g * t, s) @ v).reshape(b, h, t, d)
    if allowed is not None and not allowed.any(axis=1).all():
        out[:, :, ~allowed.any(axis=1), :] = 0.0  # rows that see nothing: zeros
    return out


def torch_reference() -> tuple[Any, Callable[..., np.ndarray]] | None:
    """(torch, attention(q, k, v, scale, allowed)) on torch tensors, or None without torch.

    Mask semantics as the contract: T == S causal is torch's own is_causal (the same rule
    there); otherwise the contract's boolean mask is passed as attn_mask (torch's
    is_causal aligns top-left, the contract bottom-right). GQA: enable_gqa where torch has
    it, else K/V heads repeated. Rows that see no key: torch gives NaN, the contract
    zeros, so they are zeroed (only when the mask has such rows)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        sdpa(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1),
             enable_gqa=True)
        gqa_kw = True
    except (TypeError, RuntimeError):
        gqa_kw = False

    def attention(q: Any, k: Any, v: Any, scale: float, allowed: Any, causal_same: bool,
                  empty_rows: Any) -> Any:
        g = q.shape[1] // k.shape[1]
        kw: dict[str, Any] = {"scale": scale}
        if g > 1:
            if gqa_kw:
                kw["enable_gqa"] = True
            else:
                k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        if causal_same:
            kw["is_causal"] = True
        elif allowed is not None:
            kw["attn_mask"] = allowed
        out = sdpa(q, k, v, **kw)
        if empty_rows is not None:
            out[:, :, empty_rows, :] = 0.0
        return out

    return torch, attention


class Reference:
    """One Python implementation bound to per-call inputs of one case."""

    def __init__(self, name: str, fn: Callable[[Any], Any], inputs: list[Any]) -> None:
        self.name, self.fn, self.inputs = name, fn, inputs

    def sample(self, batches: int, reps: int) -> float:
        """The harness's estimator: min over `batches` batch means of `reps` calls, each
        call on inputs of its own; process CPU time."""
        best = float("inf")
        for _ in range(batches):
            t0 = time.process_time_ns()
            for i in range(reps):
                self.fn(self.inputs[i % len(self.inputs)])
            best = min(best, (time.process_time_ns() - t0) / 1e3 / reps)
        return best

    def calibrate(self) -> int:
        """Calls per batch so that a batch lasts >= MIN_US (like the harness)."""
        self.fn(self.inputs[0])
        reps = 1
        while True:
            t0 = time.process_time_ns()
            for i in range(reps):
                self.fn(self.inputs[i % len(self.inputs)])
            us = (time.process_time_ns() - t0) / 1e3
            if us >= MIN_US / 4 or reps >= 4096:
                return max(1, int(MIN_US / (us / reps)) + 1)
            reps *= 4


Inputs = tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray | None]


def random_case(params: list[int], rng: np.random.Generator, mask: str = "causal"
                ) -> tuple[Inputs, np.ndarray | None]:
    """(q, k, v, scale, visibility = causal rule AND explicit mask), explicit mask."""
    b, h, hkv, t, s, d, causal = params
    q = rng.uniform(-1, 1, (b, h, t, d)).astype(np.float32)
    k = rng.uniform(-1, 1, (b, hkv, s, d)).astype(np.float32)
    v = rng.uniform(-2, 2, (b, hkv, s, d)).astype(np.float32)
    allowed, explicit = allowed_mask(t, s, causal), None
    if mask == "random":
        explicit = rng.uniform(size=(t, s)) < 0.6
        explicit[rng.uniform(size=t) < 0.2] = False  # some rows see nothing at all
        allowed = explicit if allowed is None else allowed & explicit
    return (q, k, v, float(np.float32(1.0 / np.sqrt(d))), allowed), explicit


def naive_c(work: Path) -> Callable[..., np.ndarray]:
    """naive.c as a shared library, called through ctypes: the experiment's own semantics."""
    lib = work / "naive.so"
    subprocess.run(["gcc", "-O2", "-std=c11", "-shared", "-fPIC", str(EXP / "naive.c"),
                    "-o", str(lib), "-lm"], check=True)
    fn = ctypes.CDLL(str(lib)).attention
    f32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    fn.argtypes = [f32, f32, f32, f32, ctypes.c_void_p, *[ctypes.c_int] * 6,
                   ctypes.c_float, ctypes.c_int]

    def run(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
            allowed: np.ndarray | None, causal: int) -> np.ndarray:
        out = np.empty_like(q)
        m = None if allowed is None else np.ascontiguousarray(allowed, dtype=np.uint8)
        ptr = None if m is None else m.ctypes.data_as(ctypes.c_void_p)
        b, h, t, d = q.shape
        fn(q, k, v, out, ptr, b, h, k.shape[1], t, k.shape[2], d, scale, causal)
        return out

    return run


def check_references(work: Path, suite: Suite, torch_ref: Any) -> None:
    """numpy and torch against naive.c: every bench case, then masked GQA shapes with
    T != S (explicit masks combined with the causal rule, fully hidden rows)."""
    naive = naive_c(work)
    rng = np.random.default_rng(5)
    shapes = [(p, "causal") for _, p in suite] + [
        ([2, 6, 2, 5, 9, 7, 1], "random"), ([1, 4, 1, 9, 5, 16, 1], "causal"),
        ([1, 6, 3, 12, 12, 33, 0], "random"), ([1, 8, 2, 40, 48, 64, 1], "random")]
    worst = {"numpy": 0.0, "torch": 0.0}
    for params, kind in shapes:
        (q, k, v, scale, allowed), explicit = random_case(params, rng, kind)
        want = naive(q, k, v, scale, explicit, params[6])  # causal flag, mask separately
        got = {"numpy": numpy_attention(q, k, v, scale, allowed)}
        if torch_ref is not None:
            torch, attention = torch_ref
            causal_same = kind == "causal" and params[3] == params[4] and params[6] == 1
            empty = None if allowed is None or allowed.any(axis=1).all() else \
                torch.from_numpy(~allowed.any(axis=1))
            got["torch"] = attention(*(torch.from_numpy(x) for x in (q, k, v)), scale,
                                     None if allowed is None else torch.from_numpy(allowed),
                                     causal_same, empty).numpy()
        tol = 1e-4 * float(np.abs(v).max())
        for name, out in got.items():
            err = float(np.abs(out - want).max())
            worst[name] = max(worst[name], err)
            if not err <= tol:
                raise SystemExit(f"{name} disagrees with naive.c on {params} ({kind}): "
                                 f"max |err| {err:.3g} > {tol:.3g}")
    print("references agree with naive.c (max |err|): "
          + ", ".join(f"{n} {e:.2e}" for n, e in worst.items() if n in ("numpy", "torch")
                      and (n == "numpy" or torch_ref is not None)))


def star(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """fn taking one tuple of arguments."""
    return lambda args: fn(*args)


def python_refs(suite: Suite, torch_ref: Any, rng: np.random.Generator
                ) -> dict[str, list[Reference]]:
    """Per case: numpy (and torch) on 8 input sets of their own, cycled per call."""
    out: dict[str, list[Reference]] = {}
    for case, params in suite:
        sets = [random_case(params, rng)[0] for _ in range(8)]
        refs = [Reference("numpy", star(numpy_attention), sets)]
        if torch_ref is not None:
            torch, attention = torch_ref
            causal_same = params[3] == params[4] and params[6] == 1
            tsets = [(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), scale,
                      None if a is None else torch.from_numpy(a), causal_same, None)
                     for q, k, v, scale, a in sets]
            refs.append(Reference("torch", star(attention), tsets))
        out[case] = refs
    return out


# ---------------------------------------------------------------- machine limits

LIMITS_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
__attribute__((target("avx2,fma"))) static double peak256(long n) {
    __m256 a[12], x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-3f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    double t = now();
    for (long k = 0; k < n; k++)
        #pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    t = now() - t;
    float s = 0; for (int i = 0; i < 12; i++) s += a[i][0] + a[i][7];
    return s == 1.5f ? 0 : n * 12.0 * 16 / t / 1e9;
}
__attribute__((target("avx512f"))) static double peak512(long n) {
    __m512 a[24], x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-3f);
    for (int i = 0; i < 24; i++) a[i] = _mm512_set1_ps((float)i);
    double t = now();
    for (long k = 0; k < n; k++)
        #pragma GCC unroll 24
        for (int i = 0; i < 24; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    t = now() - t;
    float s = 0; for (int i = 0; i < 24; i++) s += a[i][0] + a[i][15];
    return s == 1.5f ? 0 : n * 24.0 * 32 / t / 1e9;
}
__attribute__((target("avx2"))) static double readbw(size_t bytes, int passes) {
    size_t n = bytes / 32;
    __m256 *buf = aligned_alloc(64, n * 32);
    for (size_t i = 0; i < n; i++) buf[i] = _mm256_set1_ps(1.0f);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < n; i += 4) s0 = _mm256_add_ps(s0, buf[i]); /* warm */
    double t = now();
    for (int p = 0; p < passes; p++)
        for (size_t i = 0; i < n; i += 4) {
            s0 = _mm256_add_ps(s0, buf[i]); s1 = _mm256_add_ps(s1, buf[i + 1]);
            s2 = _mm256_add_ps(s2, buf[i + 2]); s3 = _mm256_add_ps(s3, buf[i + 3]);
        }
    t = now() - t;
    float s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))[0];
    free(buf);
    return s == 1.5f ? 0 : (double)n * 32 * passes / t / 1e9;
}
int main(int argc, char **argv) {
    size_t l2 = strtoul(argv[1], 0, 10), l3 = strtoul(argv[2], 0, 10);
    int wide = argc > 3;
    double p = 0, b2 = 0, b3 = 0;
    for (int r = 0; r < 3; r++) {
        double x = wide ? peak512(20000000) : peak256(40000000);
        double y = readbw(l2 / 2, (int)(4e9 / l2) + 1), z = readbw(l3, (int)(2e9 / l3) + 1);
        if (x > p) p = x; if (y > b2) b2 = y; if (z > b3) b3 = z;
    }
    printf("%.3f %.3f %.3f\n", p, b2, b3);
    return 0;
}
"""


def cache_bytes(index: int, default: int) -> int:
    """Size of a cache level of cpu0 from sysfs (index2 = L2, index3 = L3)."""
    try:
        text = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size").read_text()
        return int(text.strip().rstrip("K")) * 1024
    except (OSError, ValueError):
        return default


def machine_limits(work: Path) -> dict[str, float]:
    """FMA peak (GFLOPS) and L2/L3 read bandwidth (GB/s) of the core this runs on."""
    src, exe = work / "limits.c", work / "limits"
    src.write_text(LIMITS_C)
    subprocess.run(["gcc", "-O2", "-std=gnu11", str(src), "-o", str(exe)], check=True)
    l2, l3 = cache_bytes(2, 1 << 20), cache_bytes(3, 32 << 20)
    # the L3 buffer: 8x L2 (past L2, well inside L3), at most half of L3
    argv = [str(exe), str(l2), str(min(l3 // 2, 8 * l2))] + (["wide"] if host_has_avx512()
                                                              else [])
    peak, bw2, bw3 = map(float, subprocess.run(argv, capture_output=True, text=True,
                                               check=True).stdout.split())
    return {"peak": peak, "l2": bw2, "l3": bw3, "l2_bytes": l2, "l3_bytes": l3}


def limit_of(params: list[int], lim: dict[str, float]) -> tuple[float, str]:
    """(GFLOPS limit, what binds) for one case. The bandwidth is L3's unless a whole batch
    of calls fits in L2: the harness gives every call of a batch inputs of its own, written
    before the batch (and numpy/torch cycle through 8 input sets), so a batch of >= 2 ms of
    calls reads most of its inputs from L3."""
    nbytes = case_bytes(params)
    calls = max(1.0, MIN_US / (flops(params) / lim["peak"] / 1e3))  # at the peak's speed
    level = "l2" if nbytes * calls <= lim["l2_bytes"] else "l3"
    bw_bound = lim[level] * flops(params) / nbytes
    return (lim["peak"], "FMA") if lim["peak"] <= bw_bound else (bw_bound, level.upper())


# ---------------------------------------------------------------- compare (fresh process)

def blas_info() -> str:
    from threadpoolctl import threadpool_info
    pools = [f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} "
             f"threads={p.get('num_threads')} ({Path(p.get('filepath', '')).name})"
             for p in threadpool_info()]
    return "; ".join(pools) or "none found"


@contextmanager
def bench_lock_after(work: Path, suite: Suite, torch_ref: Any) -> Iterator[Path]:
    """The references checked and the limits program built, then the benchmark lock."""
    check_references(work, suite, torch_ref)
    (work / "c").mkdir()
    with bench_lock("attention-bench"):
        yield work


def compare(chosen: dict[str, Any], n_rounds: int) -> None:
    """Re-measure the search's choice (overall best and per-case specialists) with naive,
    numpy and torch, interleaved, and print the table."""
    suite = cases()
    knobs, specialists = chosen["best"], chosen.get("specialists", {})
    spec_names = {case: f"spec_{case}" for case in specialists}
    torch_ref = torch_reference()
    gone = [v for v in BLAS_ENV if v in os.environ]
    print(f"fresh process, pid {os.getpid()}, timing on CPU {TIMING_CPU}; {', '.join(BLAS_ENV)} "
          f"{'still set: ' + ', '.join(gone) if gone else 'unset'}")
    torch_note = (f"{torch_ref[0].__version__}, threads={torch_ref[0].get_num_threads()}"
                  if torch_ref else "not installed (pip install -e '.[bench]')")
    print(f"numpy {np.__version__}; torch {torch_note}")
    print(f"BLAS (threadpoolctl): {blas_info()}")
    with tempfile.TemporaryDirectory(prefix="bench-attention-") as tmp, \
            bench_lock_after(Path(tmp), suite, torch_ref) as work:
        lim = machine_limits(work)
        sources = [("tuned", TEMPLATE.render(knobs)),
                   ("naive", (EXP / "naive.c").read_text())]
        sources += [(spec_names[c], TEMPLATE.render(k)) for c, k in specialists.items()]
        built = build(sources, work / "c", "compare")
        names = [name for name, _ in sources]
        pin({TIMING_CPU})  # driver, workers, numpy and torch: all on one CPU
        bench, batches = start(built, work, suite, f"{MIN_US:g} 2 {3 * MIN_US:g} 3")
        refs = python_refs(suite, torch_ref, np.random.default_rng(3))
        reps = {c: [r.calibrate() for r in refs[c]] for c, _ in suite}
        samples: dict[str, dict[str, list[float]]] = {
            c: {m: [] for m in names + [r.name for r in refs[c]]} for c, _ in suite}
        try:
            for _ in range(n_rounds):
                for case, by in kb.rounds(bench, 1, suite, names).items():
                    for m in names:
                        samples[case][m] += by[m]
                for case, _ in suite:
                    for ref, n in zip(refs[case], reps[case], strict=True):
                        samples[case][ref.name].append(ref.sample(batches[case], n))
        finally:
            bench.close()
        lim = {k: max(v, machine_limits(work)[k]) if k in ("peak", "l2", "l3") else v
               for k, v in lim.items()}  # limits again after the rounds: the best of two
    for case, name in spec_names.items():  # the case's winner: its specialist
        samples[case]["winner"] = samples[case][name]
    for case, _ in suite:
        samples[case].setdefault("winner", samples[case]["tuned"])
    report(suite, samples, lim, chosen, n_rounds, torch_ref is not None)


def report(suite: Suite, samples: dict[str, dict[str, list[float]]], lim: dict[str, float],
           chosen: dict[str, Any], n_rounds: int, with_torch: bool) -> None:
    print(f"\nmachine: FMA peak {lim['peak']:.1f} GFLOPS (one core, "
          f"{'AVX-512' if host_has_avx512() else 'AVX2'}), read bandwidth L2 "
          f"{lim['l2']:.1f} GB/s, L3 {lim['l3']:.1f} GB/s (one core; L2 "
          f"{lim['l2_bytes'] / 2**20:.0f} MiB, L3 {lim['l3_bytes'] / 2**20:.0f} MiB)")
    print("tuned (overall best): " + ", ".join(f"{k}={v}" for k, v in chosen["best"].items()))
    for case, k in chosen.get("specialists", {}).items():
        print(f"winner on {case} (specialist): " + ", ".join(f"{a}={b}" for a, b in k.items()))
    print(f"{n_rounds} interleaved rounds; us per call = median over rounds of each "
          "implementation's min-of-batch-means; GFLOPS from the FLOP formula in the docstring")
    impls = ["naive", "tuned", "winner", "numpy"] + (["torch"] if with_torch else [])
    refs = impls[3:]
    head = (f"{'case':8s} " + " ".join(f"{m + ' us':>10s}" for m in impls)
            + f" {'vs naive':>8s} " + " ".join(f"{'/' + m:>7s}" for m in refs)
            + f" {'win GF':>8s} " + " ".join(f"{m[:5] + ' GF':>8s}" for m in refs)
            + f" {'limit GF':>8s} {'bound':>5s} {'% limit':>7s}")
    print(head)
    total = dict.fromkeys(impls, 0.0)
    for case, params in suite:
        med = {m: statistics.median(samples[case][m]) for m in impls}
        for m in impls:
            total[m] += med[m]
        speed = statistics.median(a / b for a, b in zip(samples[case]["naive"],
                                                         samples[case]["winner"], strict=True))
        fl = flops(params)
        gf = {m: fl / med[m] / 1e3 for m in impls}
        limit, bound = limit_of(params, lim)
        print(f"{case:8s} " + " ".join(f"{med[m]:10.1f}" for m in impls)
              + f" {speed:7.2f}x " + " ".join(f"{med['winner'] / med[m]:6.2f}x" for m in refs)
              + f" {gf['winner']:8.1f} " + " ".join(f"{gf[m]:8.1f}" for m in refs)
              + f" {limit:8.1f} {bound:>5s} {100 * gf['winner'] / limit:6.1f}%")
    print(f"{'suite':8s} " + " ".join(f"{total[m]:10.1f}" for m in impls)
          + f" {total['naive'] / total['winner']:7.2f}x "
          + " ".join(f"{total['winner'] / total[m]:6.2f}x" for m in refs))
    print("winner = the case's specialist where the search found one, else the overall best "
          "(tuned); /numpy, /torch = winner's time over theirs (below 1.00x the winner is "
          "faster); vs naive = median of per-round naive/winner")


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--search-rounds", type=int, default=3)
    ap.add_argument("--search", choices=["host", "all"], default="host",
                    help="host: every combination on the host's widest vector path")
    ap.add_argument("--knobs", help="JSON knobs: skip the search")
    ap.add_argument("--compare", help=argparse.SUPPRESS)  # the fresh process
    args = ap.parse_args()
    if args.compare:
        compare(json.loads(args.compare), args.rounds)
        return
    suite = cases()
    print("cases: " + ", ".join(name for name, _ in suite))
    if args.knobs:
        chosen: dict[str, Any] = {"best": {**TEMPLATE.DEFAULTS, **json.loads(args.knobs)}}
    else:
        print(f"search: {len(search_space(args.search))} combinations x "
              f"{args.search_rounds} rounds", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-attention-") as tmp:
            chosen = search(Path(tmp), suite, args.search_rounds, args.search)
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    proc = subprocess.run([sys.executable, __file__, "--rounds", str(args.rounds),
                           "--compare", json.dumps(chosen)], env=env)
    raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
