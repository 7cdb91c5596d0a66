"""The C harness on real gcc builds: symbol renaming, failure mapping, timing protocol."""

from __future__ import annotations

import subprocess
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


def test_build_renames_target_and_localises_helpers(tmp_path: Path) -> None:
    # two implementations that both define a global `helper` must link into one binary
    a, b = tmp_path / "a.c", tmp_path / "b.c"
    a.write_text(HELPER_IMPL % "0.0f")
    b.write_text(HELPER_IMPL % "0.0f * 2")
    impls = [cbuild.Impl("candidate", a), cbuild.Impl("incumbent", b),
             cbuild.Impl("naive", LINEAR / "naive.c")]
    build = cbuild.build(TARGET, impls, DRIVER, tmp_path / "out")
    symbols = subprocess.run(["nm", str(build.binary)], capture_output=True, text=True).stdout
    globals_ = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert {"matmul_forward__rl_cand", "matmul_forward__rl_ref1",
            "matmul_forward__rl_ref2"} <= globals_
    assert "matmul_forward" not in globals_ and "helper" not in globals_
    table = (tmp_path / "out" / "rl_impls.c").read_text()
    assert '"candidate", "incumbent", "naive"' in table
    # the linked binary really calls each implementation: all three pass validation
    proc = subprocess.run([str(build.binary), "validate", "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-500:]
    assert proc.stdout.count("RLIMPL") == 3 and proc.stdout.rstrip().endswith("RLOK")


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


# Every adversarial check, each with a candidate built to slip past the others.
EXPECTED = {
    "wrong_result": ("validation_error", "wrong_result", "max abs error"),
    "ignores_bias": ("validation_error", "wrong_result", "bias=yes"),
    "shape_specialised": ("validation_error", "wrong_result", "C=1"),
    "caches": ("validation_error", "stale_result", "same addresses"),
    "writes_past_end": ("validation_error", "guard_overwrite", "byte offset 4"),
    "accumulates_nan": ("validation_error", "nan_inf", "not finite"),
    "modifies_input": ("validation_error", "input_modified", "read-only"),
    "reads_past_end": ("sanitizer", "heap-buffer-overflow", "reads_past_end.c:"),
    "traps": ("crash", "SIGILL", ""),
}


@pytest.fixture(scope="module")
def sanitizer_build(tmp_path_factory: pytest.TempPathFactory) -> cbuild.Build:
    """ONE sanitizer binary holding naive and every failing fixture (validated one by one)."""
    impls = [cbuild.Impl("naive", LINEAR / "naive.c")] + [fixture(n) for n in EXPECTED]
    impls.append(fixture("hangs"))
    return cbuild.build(TARGET, impls, DRIVER, tmp_path_factory.mktemp("san"), sanitize=True)


def test_naive_passes_sanitizer_validation(sanitizer_build: cbuild.Build) -> None:
    log = run.validate(sanitizer_build, sanitizer_build.binary.parent, 11, 60, index=0)
    assert "RLOK" in log and "C=3072" in log


@pytest.mark.parametrize("name", list(EXPECTED))
def test_adversarial_check_catches(sanitizer_build: cbuild.Build, name: str) -> None:
    kind, what, where = EXPECTED[name]
    index = sanitizer_build.impl_names.index(name)
    with pytest.raises(HarnessFailure) as info:
        run.validate(sanitizer_build, sanitizer_build.binary.parent, 11, 60, index=index)
    exc = info.value
    assert exc.kind == kind, exc.message
    assert what in exc.message and where in exc.message + exc.detail
    assert "\n" not in exc.message and exc.detail


def test_hanging_candidate_times_out(sanitizer_build: cbuild.Build) -> None:
    index = sanitizer_build.impl_names.index("hangs")
    with pytest.raises(HarnessFailure) as info:
        run.validate(sanitizer_build, sanitizer_build.binary.parent, 11, 1.5, index=index)
    assert info.value.kind == "timeout"


@pytest.fixture(scope="module")
def bench_build(tmp_path_factory: pytest.TempPathFactory) -> cbuild.Build:
    impls = [cbuild.Impl("candidate", LINEAR / "naive.c"),
             cbuild.Impl("incumbent", LINEAR / "naive.c")]
    return cbuild.build(TARGET, impls, DRIVER, tmp_path_factory.mktemp("fast"))


SMALL_CASES = [("tiny", [1, 2, 32, 24, 1]), ("small", [1, 4, 128, 96, 0])]


def test_interleaved_timing_pairs_every_round(bench_build: cbuild.Build) -> None:
    acc = Acceptance(min_rounds=4, max_rounds=8, batch_rounds=4, max_seconds=30)
    bench = BenchProcess(bench_build.binary, cwd=bench_build.binary.parent)
    try:
        t = measure(bench, SMALL_CASES, ["candidate", "incumbent"], acc, seed=3,
                    min_sample_us=200)
    finally:
        bench.close()
    assert t.rounds in (4, 8) and set(t.samples) == {"tiny", "small"}
    for case in t.samples.values():
        assert set(case) == {"candidate", "incumbent"}
        assert len(case["candidate"]) == len(case["incumbent"]) == t.rounds
        assert all(x > 0 for x in case["candidate"] + case["incumbent"])
    # calibrated so one batch lasts >= min_sample_us: reps * per-call time
    assert all(t.reps[c] * t.calibration_us[c] >= 150 for c in t.reps)
    assert t.reps["tiny"] > t.reps["small"] >= 1


def test_baseline_without_references_times_candidate_alone(tmp_path: Path) -> None:
    solo = cbuild.build(TARGET, [cbuild.Impl("candidate", LINEAR / "naive.c")], DRIVER, tmp_path)
    acc = Acceptance(min_rounds=5, max_rounds=10, batch_rounds=2, max_seconds=30)
    bench = BenchProcess(solo.binary, cwd=tmp_path)
    try:
        t = measure(bench, SMALL_CASES[:1], solo.impl_names, acc, min_sample_us=100)
    finally:
        bench.close()
    assert t.stop_reason == "baseline" and t.rounds == 6  # batches of 2 until >= 5
    assert list(t.samples["tiny"]) == ["candidate"] and len(t.samples["tiny"]["candidate"]) == 6


def _with_incumbent(first: str, tmp: Path) -> cbuild.Build:
    """Rebuild with `first` as impl 0, the slot the timing protocol checks as candidate."""
    names = [first, "incumbent"]
    impls = [cbuild.Impl(n, (FIXTURES / f"{n}.c") if n != "incumbent" else LINEAR / "naive.c")
             for n in names]
    return cbuild.build(TARGET, impls, DRIVER, tmp)


def test_optimised_build_check_catches_wrong_benchmark_shape(tmp_path: Path) -> None:
    build = _with_incumbent("wrong_on_benchmark", tmp_path)
    bench = BenchProcess(build.binary, cwd=tmp_path)
    acc = Acceptance(min_rounds=3, max_rounds=3, batch_rounds=3)
    try:
        with pytest.raises(HarnessFailure) as info:
            measure(bench, [("bench_shape", [1, 4, 64, 768, 1])], build.impl_names, acc,
                    min_sample_us=100)
    finally:
        bench.close()
    assert info.value.kind == "validation_error"
    assert info.value.message.startswith("wrong_result: benchmark case bench_shape")


def test_crash_and_hang_during_timing(tmp_path: Path) -> None:
    build = _with_incumbent("traps", tmp_path / "a")
    bench = BenchProcess(build.binary, cwd=tmp_path)
    acc = Acceptance(min_rounds=3, max_rounds=3, batch_rounds=3)
    with pytest.raises(HarnessFailure) as info:
        measure(bench, [("one", [1, 1, 1, 1, 1])], build.impl_names, acc, check=False)
    bench.close()
    assert info.value.kind == "crash" and "SIGILL" in info.value.message
    build = _with_incumbent("hangs", tmp_path / "b")
    bench = BenchProcess(build.binary, cwd=tmp_path)
    with pytest.raises(HarnessFailure) as info:
        measure(bench, [("one", [1, 1, 4, 4, 1])], build.impl_names, acc, check=False,
                command_timeout=1.5)
    bench.close()
    assert info.value.kind == "timeout"
    assert bench.proc.poll() is not None  # killed, not left spinning


def test_timing_measures_a_known_2x_slowdown(tmp_path: Path) -> None:
    """The same machine code run twice per call must come out twice as slow, per case."""
    impls = [cbuild.Impl("candidate", FIXTURES / "twice.c"),
             cbuild.Impl("incumbent", FIXTURES / "once.c")]
    build = cbuild.build(TARGET, impls, DRIVER, tmp_path)
    acc = Acceptance(min_rounds=8, max_rounds=8, batch_rounds=8, max_seconds=30)
    bench = BenchProcess(build.binary, cwd=tmp_path)
    try:
        t = measure(bench, SMALL_CASES, build.impl_names, acc, min_sample_us=300)
    finally:
        bench.close()
    for case, s in t.samples.items():
        ratios = sorted(c / r for c, r in zip(s["candidate"], s["incumbent"], strict=True))
        assert 1.8 < ratios[len(ratios) // 2] < 2.2, (case, ratios)
