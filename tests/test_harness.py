"""The C harness on real gcc builds: driver and workers, failure mapping, timing protocol."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ratchetloop.experiment import Acceptance
from ratchetloop.harness import HarnessFailure, cbuild, run
from ratchetloop.harness.timing import BenchProcess, measure

ROOT = Path(__file__).resolve().parents[1]
LINEAR = ROOT / "experiments" / "linear"
FIXTURES = LINEAR / "fixtures"
TARGET = cbuild.CTarget("matmul_forward", (
    "void {name}(float* out, const float* inp, const float* weight, const float* bias, "
    "int B, int T, int C, int OC)"))
DRIVER = [LINEAR / "driver.c"]

HELPER_IMPL = """
#include <stddef.h>
float helper(const float* a, const float* b, int n) {  /* deliberately not static */
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int B, int T, int C, int OC) {
    for (int bt = 0; bt < B * T; bt++)
        for (int o = 0; o < OC; o++)
            out[(size_t)bt * OC + o] = helper(inp + (size_t)bt * C, weight + (size_t)o * C, C)
                                       + (bias ? bias[o] : %s);
}
"""


def fixture(name: str) -> cbuild.Impl:
    return cbuild.Impl(name, FIXTURES / f"{name}.c")


def test_build_gives_each_implementation_its_own_worker(tmp_path: Path) -> None:
    # two implementations that both define a global `helper`: each worker exports only the
    # target, and the driver holds no implementation at all
    a, b = tmp_path / "a.c", tmp_path / "b.c"
    a.write_text(HELPER_IMPL % "0.0f")
    b.write_text(HELPER_IMPL % "0.0f * 2")
    impls = [cbuild.Impl("candidate", a), cbuild.Impl("incumbent", b)]
    build = cbuild.build(TARGET, impls, DRIVER, tmp_path / "out")
    assert build.impl_names == ["candidate", "incumbent"]
    for worker in build.workers:
        objs = subprocess.run(["nm", str(build.objects[worker.name])], capture_output=True,
                              text=True).stdout
        exported = {ln.split()[-1] for ln in objs.splitlines() if " T " in ln}
        assert exported == {"matmul_forward"}  # `helper` made local: it cannot interpose
    driver_syms = subprocess.run(["nm", str(build.driver)], capture_output=True, text=True)
    assert "matmul_forward" not in driver_syms.stdout and "helper" not in driver_syms.stdout
    # the candidate's worker really runs the candidate: it passes the driver's validation
    log = run.validate(build.driver, build.workers[0], tmp_path, 3, 60)
    assert log.rstrip().endswith("RLOK") and "C=3072" in log


def test_compile_error_is_build_error_with_diagnostic(tmp_path: Path) -> None:
    with pytest.raises(HarnessFailure) as info:
        cbuild.build(TARGET, [cbuild.Impl("candidate", FIXTURES / "syntax_error.c")], DRIVER,
                     tmp_path)
    exc = info.value
    assert exc.kind == "build_error" and exc.phase == "build"
    assert "undeclared_thing" in exc.message and "error" in exc.message
    assert "syntax_error.c:" in exc.detail and str(tmp_path) not in exc.detail


def test_missing_target_function_is_build_error(tmp_path: Path) -> None:
    src = tmp_path / "candidate.c"
    src.write_text("void matmul_fwd(float* out) { out[0] = 0.0f; }\n")
    with pytest.raises(HarnessFailure) as info:
        cbuild.build(TARGET, [cbuild.Impl("candidate", src)], DRIVER, tmp_path / "o")
    assert info.value.kind == "build_error"
    assert "matmul_forward" in info.value.message


def test_reference_that_fails_to_build_is_not_blamed_on_candidate(tmp_path: Path) -> None:
    impls = [cbuild.Impl("candidate", LINEAR / "naive.c"), fixture("syntax_error")]
    with pytest.raises(HarnessFailure) as info:
        cbuild.build(TARGET, impls, DRIVER, tmp_path)
    assert info.value.kind == "harness_error"


def test_signature_glue_round_trips_every_argument_kind() -> None:
    target = cbuild.CTarget("f", "void {name}(const float *q, float* out, "
                                 "const unsigned char *mask, int n, float scale, long k)")
    kinds = [(p.kind, p.name) for p in target.params()]
    assert kinds == [("ptr", "q"), ("ptr", "out"), ("ptr", "mask"), ("int", "n"),
                     ("float", "scale"), ("int", "k")]
    stub, invoke = cbuild.stub_source(target), cbuild.invoke_source(target)
    assert "rl_call_f64(&c, 4, (double)p4)" in stub and "rl_call_ptr(&c, 2, p2)" in stub
    assert "(float)rl_f64(c->a[4])" in invoke and "(const unsigned char *)" in invoke
    with pytest.raises(ValueError):
        cbuild.parse_params("int {name}(int n)")  # the harness calls void functions only


# Every adversarial check, each with a candidate built to slip past the others. These run
# the validation layer itself, so the object checks are off (check=False): `caches` keeps
# state in a static, which the object check alone would already refuse.
EXPECTED = {
    "wrong_result": ("validation_error", "wrong_result", "max abs error"),
    "ignores_bias": ("validation_error", "wrong_result", "bias=yes"),
    "shape_specialised": ("validation_error", "wrong_result", "C=1"),
    "caches": ("validation_error", "stale_result", "same addresses"),
    "writes_past_end": ("sanitizer", "heap-buffer-overflow", "writes_past_end.c:"),
    "accumulates_nan": ("validation_error", "nan_inf", "not finite"),
    "modifies_input": ("validation_error", "input_modified", "read-only"),
    "reads_past_end": ("sanitizer", "heap-buffer-overflow", "reads_past_end.c:"),
    "traps": ("crash", "SIGILL", ""),
}


@pytest.fixture(scope="module")
def sanitizer_workers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, cbuild.Build]:
    """One sanitizer worker per fixture (and naive), all validated by one shared driver."""
    base = tmp_path_factory.mktemp("san")
    driver = cbuild.build_driver(TARGET, DRIVER, base)
    names = ["naive", *EXPECTED, "hangs"]

    def one(name: str) -> cbuild.Build:
        src = LINEAR / "naive.c" if name == "naive" else FIXTURES / f"{name}.c"
        return cbuild.build(TARGET, [cbuild.Impl("candidate", src)], DRIVER, base / name,
                            sanitize=True, check=False, driver=driver)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def test_naive_passes_sanitizer_validation(sanitizer_workers: dict[str, cbuild.Build]) -> None:
    b = sanitizer_workers["naive"]
    log = run.validate(b.driver, b.workers[0], b.workers[0].binary.parent, 11, 60)
    assert "RLOK" in log and "C=3072" in log


@pytest.mark.parametrize("name", list(EXPECTED))
def test_adversarial_check_catches(sanitizer_workers: dict[str, cbuild.Build], name: str) -> None:
    kind, what, where = EXPECTED[name]
    b = sanitizer_workers[name]
    with pytest.raises(HarnessFailure) as info:
        run.validate(b.driver, b.workers[0], b.workers[0].binary.parent, 11, 60)
    exc = info.value
    assert exc.kind == kind, exc.message
    assert what in exc.message and where in exc.message + exc.detail
    assert "\n" not in exc.message and exc.detail


def test_hanging_candidate_times_out(sanitizer_workers: dict[str, cbuild.Build]) -> None:
    b = sanitizer_workers["hangs"]
    with pytest.raises(HarnessFailure) as info:
        run.validate(b.driver, b.workers[0], b.workers[0].binary.parent, 11, 1.5)
    assert info.value.kind == "timeout"


@pytest.fixture(scope="module")
def bench_build(tmp_path_factory: pytest.TempPathFactory) -> cbuild.Build:
    impls = [cbuild.Impl("candidate", LINEAR / "naive.c"),
             cbuild.Impl("incumbent", LINEAR / "naive.c")]
    return cbuild.build(TARGET, impls, DRIVER, tmp_path_factory.mktemp("fast"))


SMALL_CASES = [("tiny", [1, 2, 32, 24, 1]), ("small", [1, 4, 128, 96, 0])]


def workers(build: cbuild.Build) -> list[tuple[str, Path]]:
    return [(w.name, w.binary) for w in build.workers]


def test_interleaved_timing_pairs_every_round(bench_build: cbuild.Build) -> None:
    acc = Acceptance(min_rounds=4, max_rounds=8, batch_rounds=4, max_seconds=30)
    bench = BenchProcess(bench_build.driver, cwd=bench_build.driver.parent)
    try:
        t = measure(bench, SMALL_CASES, workers(bench_build), acc, seed=3, min_sample_us=200)
    finally:
        bench.close()
    assert t.rounds in (3, 4, 8) and set(t.samples) == {"tiny", "small"}  # its looks
    for case in t.samples.values():
        assert set(case) == {"candidate", "incumbent"}
        assert len(case["candidate"]) == len(case["incumbent"]) == t.rounds
        assert all(x > 0 for x in case["candidate"] + case["incumbent"])
    # calibrated so one batch lasts >= min_sample_us: reps * per-call time
    assert all(t.reps[c] * t.calibration_us[c] >= 150 for c in t.reps)
    assert t.reps["tiny"] > t.reps["small"] >= 1
    # one driver-worker exchange is measured, and batches dwarf it (<= 1% of a batch)
    assert 0 < t.ipc_us and all(t.reps[c] * t.calibration_us[c] >= 50 * t.ipc_us
                                for c in t.reps)


def test_baseline_without_references_times_candidate_alone(tmp_path: Path) -> None:
    solo = cbuild.build(TARGET, [cbuild.Impl("candidate", LINEAR / "naive.c")], DRIVER, tmp_path)
    acc = Acceptance(min_rounds=5, max_rounds=10, batch_rounds=2, max_seconds=30)
    bench = BenchProcess(solo.driver, cwd=tmp_path)
    try:
        t = measure(bench, SMALL_CASES[:1], workers(solo), acc, min_sample_us=100)
    finally:
        bench.close()
    assert t.stop_reason == "baseline" and t.rounds == 6  # batches of 2 until >= 5
    assert list(t.samples["tiny"]) == ["candidate"] and len(t.samples["tiny"]["candidate"]) == 6


def _with_incumbent(first: str, tmp: Path) -> cbuild.Build:
    """`first` as the candidate (worker 0), naive as the incumbent."""
    impls = [cbuild.Impl(first, FIXTURES / f"{first}.c"),
             cbuild.Impl("incumbent", LINEAR / "naive.c")]
    return cbuild.build(TARGET, impls, DRIVER, tmp, check=False)


def test_optimised_build_check_catches_wrong_benchmark_shape(tmp_path: Path) -> None:
    build = _with_incumbent("wrong_on_benchmark", tmp_path)
    bench = BenchProcess(build.driver, cwd=tmp_path)
    acc = Acceptance(min_rounds=3, max_rounds=3, batch_rounds=3)
    try:
        with pytest.raises(HarnessFailure) as info:
            measure(bench, [("bench_shape", [1, 4, 64, 768, 1])], workers(build), acc,
                    min_sample_us=100)
    finally:
        bench.close()
    assert info.value.kind == "validation_error"
    assert info.value.message.startswith("wrong_result: benchmark case bench_shape")
    assert "B=1 T=4 C=64 OC=768" in info.value.message


def test_crash_and_hang_during_timing(tmp_path: Path) -> None:
    build = _with_incumbent("traps", tmp_path / "a")
    bench = BenchProcess(build.driver, cwd=tmp_path)
    acc = Acceptance(min_rounds=3, max_rounds=3, batch_rounds=3)
    with pytest.raises(HarnessFailure) as info:
        measure(bench, [("one", [1, 1, 1, 1, 1])], workers(build), acc, check=False)
    bench.close()
    assert info.value.kind == "crash" and "SIGILL" in info.value.message
    build = _with_incumbent("hangs", tmp_path / "b")
    bench = BenchProcess(build.driver, cwd=tmp_path)
    with pytest.raises(HarnessFailure) as info:
        measure(bench, [("one", [1, 1, 4, 4, 1])], workers(build), acc, check=False,
                command_timeout=1.5)
    bench.close()
    assert info.value.kind == "timeout"
    assert bench.proc.poll() is not None  # killed, not left spinning


def test_timing_measures_a_known_2x_slowdown(tmp_path: Path) -> None:
    """The same machine code run twice per call must come out twice as slow, per case."""
    impls = [cbuild.Impl("candidate", FIXTURES / "twice.c"),
             cbuild.Impl("incumbent", FIXTURES / "once.c")]
    build = cbuild.build(TARGET, impls, DRIVER, tmp_path, check=False)
    acc = Acceptance(min_rounds=8, max_rounds=8, batch_rounds=8, max_seconds=30)
    bench = BenchProcess(build.driver, cwd=tmp_path)
    try:
        t = measure(bench, SMALL_CASES, workers(build), acc, min_sample_us=300)
    finally:
        bench.close()
    for case, s in t.samples.items():
        ratios = sorted(c / r for c, r in zip(s["candidate"], s["incumbent"], strict=True))
        assert 1.8 < ratios[len(ratios) // 2] < 2.2, (case, ratios)
