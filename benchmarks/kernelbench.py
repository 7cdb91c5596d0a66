"""Shared pieces of the kernel benchmarks (bench_linear, bench_roofline, bench_attention):
host limits measured in C, C implementations timed interleaved under one harness driver, and the
single-threaded BLAS reference timed the same way (one per-call time per round, median of
the rounds for every implementation).

Import before numpy: it pins BLAS to one thread and unsets OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE for this command alone, so OpenBLAS picks its kernel for the host.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import importlib.util  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

from ratchetloop.harness import cbuild  # noqa: E402
from ratchetloop.harness.timing import BenchProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Suite = list[tuple[str, list[int]]]
Samples = dict[str, dict[str, list[float]]]


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- host limits

PROBE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
__attribute__((target("avx512f,fma"))) static float peak512(long n) {
    __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
    /* distinct starting values: equal ones would let the compiler merge accumulators */
#define I(k) _mm512_set1_ps(0.5f + 0.01f * k)
    __m512 a0 = I(0), a1 = I(1), a2 = I(2), a3 = I(3), a4 = I(4), a5 = I(5), a6 = I(6),
           a7 = I(7), a8 = I(8), a9 = I(9), a10 = I(10), a11 = I(11), a12 = I(12),
           a13 = I(13), a14 = I(14), a15 = I(15), a16 = I(16), a17 = I(17), a18 = I(18),
           a19 = I(19), a20 = I(20), a21 = I(21), a22 = I(22), a23 = I(23);
#undef I
    for (long k = 0; k < n; k++) {
#define F(a) a = _mm512_fmadd_ps(a, x, y);
        F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) F(a8) F(a9) F(a10) F(a11)
        F(a12) F(a13) F(a14) F(a15) F(a16) F(a17) F(a18) F(a19) F(a20) F(a21) F(a22) F(a23)
#undef F
    }
    __m512 s = _mm512_add_ps(a0, a1);
    s = _mm512_add_ps(s, _mm512_add_ps(a2, a3)); s = _mm512_add_ps(s, _mm512_add_ps(a4, a5));
    s = _mm512_add_ps(s, _mm512_add_ps(a6, a7)); s = _mm512_add_ps(s, _mm512_add_ps(a8, a9));
    s = _mm512_add_ps(s, _mm512_add_ps(a10, a11)); s = _mm512_add_ps(s, _mm512_add_ps(a12, a13));
    s = _mm512_add_ps(s, _mm512_add_ps(a14, a15)); s = _mm512_add_ps(s, _mm512_add_ps(a16, a17));
    s = _mm512_add_ps(s, _mm512_add_ps(a18, a19)); s = _mm512_add_ps(s, _mm512_add_ps(a20, a21));
    s = _mm512_add_ps(s, _mm512_add_ps(a22, a23));
    return _mm512_reduce_add_ps(s);
}
__attribute__((target("avx2,fma"))) static float peak256(long n) {
    __m256 x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
#define I(k) _mm256_set1_ps(0.5f + 0.01f * k)
    __m256 a0 = I(0), a1 = I(1), a2 = I(2), a3 = I(3), a4 = I(4), a5 = I(5), a6 = I(6),
           a7 = I(7), a8 = I(8), a9 = I(9), a10 = I(10), a11 = I(11);
#undef I
    for (long k = 0; k < n; k++) {
#define F(a) a = _mm256_fmadd_ps(a, x, y);
        F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) F(a8) F(a9) F(a10) F(a11)
#undef F
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float o[8]; _mm256_storeu_ps(o, s);
    return o[0] + o[7];
}
/* read bandwidth: 8 independent AVX2 sums over the working set, again and again */
__attribute__((target("avx2,fma"))) static float sweep(const float *p, long n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0,
           s7 = s0;
    for (long i = 0; i + 64 <= n; i += 64) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(p + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(p + i + 24));
        s4 = _mm256_add_ps(s4, _mm256_loadu_ps(p + i + 32));
        s5 = _mm256_add_ps(s5, _mm256_loadu_ps(p + i + 40));
        s6 = _mm256_add_ps(s6, _mm256_loadu_ps(p + i + 48));
        s7 = _mm256_add_ps(s7, _mm256_loadu_ps(p + i + 56));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)),
                             _mm256_add_ps(_mm256_add_ps(s4, s5), _mm256_add_ps(s6, s7)));
    float o[8]; _mm256_storeu_ps(o, s);
    return o[0] + o[3];
}
int main(int argc, char **argv) {
    long l2 = atol(argv[1]), l3 = atol(argv[2]), mem = atol(argv[3]);
    volatile float sink = 0;
    double best512 = 0, best256 = 0;
    long n = 20000000;
    for (int r = 0; r < 5; r++) {
        double t;
        if (__builtin_cpu_supports("avx512f")) {
            t = now(); sink += peak512(n / 2); t = now() - t;
            if (n / 2 * 24 * 32 / t > best512) best512 = n / 2 * 24 * 32 / t;
        }
        t = now(); sink += peak256(n); t = now() - t;
        if (n * 12 * 16 / t > best256) best256 = n * 12 * 16 / t;
    }
    printf("peak_avx512 %.3f\npeak_avx2 %.3f\n", best512 / 1e9, best256 / 1e9);
    long sizes[3] = {l2, l3, mem};
    const char *names[3] = {"bw_l2", "bw_l3", "bw_mem"};
    for (int k = 0; k < 3; k++) {
        long nf = sizes[k] / 4;
        float *p = aligned_alloc(64, (size_t)nf * 4);
        for (long i = 0; i < nf; i++) p[i] = (float)(i & 7);
        long reps = (2L << 30) / sizes[k];
        double best = 1e30;
        for (int r = 0; r < 5; r++) {
            double t = now();
            for (long j = 0; j < reps; j++) sink += sweep(p, nf);
            t = now() - t;
            if (t < best) best = t;
        }
        printf("%s %.3f\n", names[k], (double)reps * sizes[k] / best / 1e9);
        free(p);
    }
    return sink == 12345.f;
}
"""


def cache_size(level: int, default: int) -> int:
    """The first cpu's cache of that level, from sysfs (bytes)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if int((index / "level").read_text()) == level and \
                    (index / "type").read_text().strip() in ("Unified", "Data"):
                text = (index / "size").read_text().strip()
                mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
                return int(text.rstrip("KMG")) * mult
        except (OSError, ValueError):
            continue
    return default


@dataclass
class Host:
    """One core's limits, measured now (GFLOPS, GB/s) and the cache sizes used."""

    peak_avx512: float
    peak_avx2: float
    bw_l2: float
    bw_l3: float
    bw_mem: float
    l2: int
    l3: int
    l2_ws: int
    l3_ws: int

    @property
    def peak(self) -> float:
        return max(self.peak_avx512, self.peak_avx2)

    def limit(self, flops: float, fresh: float, resident: float = 0.0) -> tuple[float, str]:
        """min(peak, each level's bandwidth x arithmetic intensity for the bytes it
        carries), and which part binds. fresh: bytes a call gets in buffers of its own
        (the harness gives every call of a batch new inputs and outputs, and a batch
        sweeps megabytes of them, so they come from L3); resident: bytes every call
        shares (a big case's weights), from L2 when they fit there, else from L3."""
        l3 = fresh + (resident if resident > self.l2 else 0.0)
        ceilings = {"compute": self.peak, "L2": self.bw_l2 * flops / (fresh + resident)}
        if l3:
            ceilings["L3"] = self.bw_l3 * flops / l3
        binds = min(ceilings, key=lambda k: ceilings[k])
        return ceilings[binds], binds

    def header(self) -> str:
        return (f"one core: FMA peak {self.peak:.0f} GFLOPS (AVX-512 {self.peak_avx512:.0f},"
                f" AVX2 {self.peak_avx2:.0f}); read bandwidth L2 {self.bw_l2:.0f} GB/s "
                f"({self.l2_ws >> 10} KiB working set, L2 {self.l2 >> 20} MiB), L3 "
                f"{self.bw_l3:.0f} GB/s ({self.l3_ws >> 20} MiB working set, L3 "
                f"{self.l3 >> 20} MiB), memory {self.bw_mem:.0f} GB/s "
                f"({MEM_WS >> 20} MiB working set)")


MEM_WS = 1 << 30  # far past any L3 share: memory bandwidth, for reference


def measure_host(work: Path) -> Host:
    l2, l3 = cache_size(2, 1 << 20), cache_size(3, 32 << 20)
    l2_ws = l2 // 2
    # past L2, well inside L3 (a VM's share of a big shared L3 is not all of it)
    l3_ws = max(4 * l2, min(l3 // 2, 8 << 20))
    src = work / "probe.c"
    src.write_text(PROBE)
    binary = work / "probe"
    subprocess.run(["gcc", "-O2", "-std=gnu11", str(src), "-o", str(binary)], check=True)
    out = subprocess.run([str(binary), str(l2_ws), str(l3_ws), str(MEM_WS)], check=True,
                         capture_output=True, text=True).stdout
    got = {k: float(v) for k, v in (line.split() for line in out.splitlines())}
    return Host(got["peak_avx512"], got["peak_avx2"], got["bw_l2"], got["bw_l3"],
                got["bw_mem"], l2, l3, l2_ws, l3_ws)


# ---------------------------------------------------------------- C implementations


def build(target: cbuild.CTarget, drivers: Sequence[Path], sources: list[tuple[str, str]],
          folder: Path, libs: dict[str, Sequence[str]] | None = None) -> cbuild.Build:
    """One driver and one optimised worker per source (index 0 plays 'candidate'); libs:
    extra linker arguments by name (the in-harness BLAS reference)."""
    folder.mkdir(parents=True)
    impls = []
    for i, (name, text) in enumerate(sources):
        path = folder / f"impl{i}.c"
        path.write_text(text)
        impls.append(cbuild.Impl("candidate" if i == 0 else name, path))
    return cbuild.build(target, impls, drivers, folder / "b", check=False, libs=libs)


def start(built: cbuild.Build, work: Path, suite: Suite,
          calibrate: str = "2000 2 6000 3") -> BenchProcess:
    """Workers started, cases added, every result checked in full, calibrated."""
    return start_calibrated(built, work, suite, calibrate)[0]


def start_calibrated(built: cbuild.Build, work: Path, suite: Suite,
                     calibrate: str) -> tuple[BenchProcess, list[str]]:
    """start(), also returning the driver's answers to the calibrate command."""
    bench = BenchProcess(built.driver, cwd=work)
    answers: list[str] = []
    for w in built.workers:
        answers += bench.command(f"impl {w.name} {w.binary}", 60)
    answers += bench.command("seed 7", 60)
    for name, params in suite:
        answers += bench.command(f"case {name} " + " ".join(map(str, params)), 60)
    answers += bench.command("check", 900)
    cal = bench.command(f"calibrate {calibrate}", 900)
    bad = [a for a in answers + cal if a.startswith("fail")]
    if bad:
        bench.close()
        raise SystemExit(f"result check failed: {bad[:3]}")
    return bench, cal


def rounds(bench: BenchProcess, n: int, suite: Suite, names: list[str]) -> Samples:
    """n interleaved rounds: per case, per implementation, one per-call time (us) each."""
    out: Samples = {c: {m: [] for m in names} for c, _ in suite}
    for line in bench.command(f"rounds {n}", 3600):
        _, ci, impl, us = line.split()
        out[suite[int(ci)][0]][names[int(impl)]].append(float(us))
    return out


def pick_best(samples: Samples, names: list[str]) -> str:
    """The implementation with the lowest geometric mean over cases of median per-call
    time: every case weighs the same, as in the loop's verdict (log-ratios). A plain sum
    let the slowest case's noise decide: 5% of attnproj_bt256 outweighs the four 16-token
    cases' differences together."""
    return min(names, key=lambda m: sum(math.log(statistics.median(by[m]))
                                        for by in samples.values()))


def time_call(call: Callable[[], object], min_us: float = 2000.0) -> float:
    """One sample like the harness's: thread CPU time per call, over a batch >= min_us."""
    reps = 1
    while True:
        t0 = time.thread_time_ns()
        for _ in range(reps):
            call()
        us = (time.thread_time_ns() - t0) / 1e3
        if us >= min_us:
            return us / reps
        reps *= 2


def interleaved(bench: BenchProcess, suite: Suite, names: list[str], n: int,
                refs: dict[str, Callable[[], object]]) -> Samples:
    """n rounds: the C implementations interleaved by the driver, then each case's
    Python reference (refs[case]) timed once; one sample per round for everyone."""
    samples: Samples = {c: {m: [] for m in [*names, "numpy"]} for c, _ in suite}
    for _ in range(n):
        for case, by in rounds(bench, 1, suite, names).items():
            for m in names:
                samples[case][m] += by[m]
        for case, _ in suite:
            samples[case]["numpy"].append(time_call(refs[case]))
    return samples


def numpy_openblas() -> Path | None:
    """numpy's bundled OpenBLAS (scipy-openblas64: ILP64, symbols scipy_*64_), or None."""
    import numpy

    libs = Path(numpy.__file__).resolve().parent.parent / "numpy.libs"
    found = sorted(libs.glob("libscipy_openblas64_*.so*"))
    return found[0] if found else None


def openblas_link(lib: Path) -> list[str]:
    """Linker arguments for a worker that calls that library (found again at run time)."""
    return [f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}"]


# numpy's own sgemm as a C implementation the harness times like the kernels (see the file)
LINEAR_OPENBLAS = (Path(__file__).parent / "linear_openblas.c").read_text()


def blas_info() -> str:
    """Which BLAS numpy runs, its kernel (architecture) and thread count (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]
    except ImportError:
        return "BLAS: threadpoolctl not installed (pip install -e '.[bench]')"
    parts = [f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
             f"threads={i.get('num_threads')}" for i in threadpool_info()
             if i.get("user_api") == "blas"]
    unset = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v not in os.environ]
    return "BLAS: " + ("; ".join(parts) or "none found") + f" ({', '.join(unset)} unset)"
