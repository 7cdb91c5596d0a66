"""The linear experiment: eval.py end to end, tuner template correctness, security, prompt."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from ratchetloop import evaluate, experiment
from ratchetloop.harness import cbuild, run
from ratchetloop.harness.cases import primary_case, read_contract

ROOT = Path(__file__).resolve().parents[1]
LINEAR = ROOT / "experiments" / "linear"
FIXTURES = LINEAR / "fixtures"
NAIVE = (LINEAR / "naive.c").read_text()


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"linear_{name}", LINEAR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


template = load("template")
security = load("security")
prompt = load("prompt")
TARGET = load("eval").SPEC.target  # the experiment's own allow-list (__cpu_model)


# ---------------- contract ----------------

def test_contract_loads_and_declares_the_template_knobs() -> None:
    exp = experiment.load(LINEAR)
    assert exp.toolchain == ["gcc"] and exp.template == "template.py"
    assert exp.knobs == template.KNOBS
    assert not any(c.primary for c in exp.cases)  # score = per-round suite total
    shapes = {(c.params["C"], c.params["OC"]) for c in exp.cases}
    assert {(768, 768), (768, 2304), (768, 3072), (3072, 768)} <= shapes
    if not (LINEAR / "SCORES.json").exists():  # as shipped; after a run it holds the best
        assert (LINEAR / "candidate.c").read_text() == NAIVE


# ---------------- eval.py end to end ----------------

def test_eval_naive_vs_naive_pairs_every_case(exp_repo: Callable[..., Path]) -> None:
    folder = exp_repo("linear")
    exp = experiment.load(folder)
    result = evaluate.run_eval(exp, NAIVE, {"incumbent": NAIVE}, seed=5)
    assert result.ok, result.failure
    assert set(result.samples) == {c.name for c in exp.enabled_cases}
    for case in result.samples.values():
        assert set(case) == {"candidate", "incumbent"}
        # A/A: decided at a scheduled look, often the first (3 rounds: "same", no 1% gain)
        assert len(case["candidate"]) == len(case["incumbent"]) == result.rounds >= 3
    # A/A: the candidate is neither far faster nor far slower on the suite total
    cand = sum(sorted(c["candidate"])[result.rounds // 2] for c in result.samples.values())
    inc = sum(sorted(c["incumbent"])[result.rounds // 2] for c in result.samples.values())
    assert 0.7 < cand / inc < 1.4
    assert "RLOK" in result.logs["validate"] and result.info["reps"]


def test_eval_seeding_baseline_times_candidate_alone(exp_repo: Callable[..., Path]) -> None:
    folder = exp_repo("linear", cases=["small_nobias"])
    result = evaluate.run_eval(experiment.load(folder), NAIVE, {})
    assert result.ok, result.failure
    assert {k: list(v) for k, v in result.samples.items()} == {"small_nobias": ["candidate"]}
    assert len(result.samples["small_nobias"]["candidate"]) == result.rounds >= 6


def test_eval_reports_compile_error(exp_repo: Callable[..., Path]) -> None:
    folder = exp_repo("linear", cases=["small_nobias"])
    bad = (FIXTURES / "syntax_error.c").read_text()
    result = evaluate.run_eval(experiment.load(folder), bad, {"incumbent": NAIVE})
    assert not result.ok and result.phase == "build"
    assert result.failure.kind == "build_error"
    assert "undeclared_thing" in result.failure.message
    assert "candidate.c:" in result.failure.detail


def test_eval_catches_wrong_answer_only_on_benchmark_shapes(
        exp_repo: Callable[..., Path]) -> None:
    folder = exp_repo("linear", cases=["attnproj_bt4"])
    cheat = (FIXTURES / "wrong_on_benchmark.c").read_text()
    result = evaluate.run_eval(experiment.load(folder), cheat, {"incumbent": NAIVE})
    assert not result.ok and result.failure.kind == "validation_error"
    assert result.failure.message.startswith("wrong_result: benchmark case attnproj_bt4")
    assert not result.samples


def test_eval_sanitizer_failure_names_the_candidate_line(
        exp_repo: Callable[..., Path]) -> None:
    folder = exp_repo("linear", cases=["small_nobias"])
    src = (FIXTURES / "reads_past_end.c").read_text()
    result = evaluate.run_eval(experiment.load(folder), src, {"incumbent": NAIVE})
    assert not result.ok and result.failure.kind == "sanitizer"
    assert "heap-buffer-overflow" in result.failure.message
    assert "candidate.c:" in result.failure.detail and "__rl_" not in result.failure.detail


# ---------------- tuner template ----------------

def covering_sample() -> list[dict]:
    """Eight combinations that together take every value of every knob (each knob cycles
    through its values at its own offset, so the pairings vary)."""
    return [{knob: values[(i * (j + 1) + i // 2) % len(values)] for j, (knob, values)
             in enumerate(template.KNOBS.items())} for i in range(8)]


def validate_all(combos: list[dict], tmp: Path, sanitize: bool) -> None:
    impls = []
    for i, knobs in enumerate(combos):
        src = tmp / f"t{i}.c"
        src.write_text(template.render(knobs))
        assert security.check(src.read_text()) == [], knobs
        impls.append(cbuild.Impl("candidate", src))
    builds = cbuild.build_each(TARGET, impls, [LINEAR / "driver.c"], tmp / "b",
                               sanitize=sanitize)
    for knobs, build in zip(combos, builds, strict=True):
        log = run.validate(build.driver, build.workers[0], tmp, 9, 300)
        assert log.rstrip().endswith("RLOK"), (knobs, log[-800:])


def test_template_covering_sample_passes_sanitizer_validation(tmp_path: Path) -> None:
    """Every register block, and every value of every other knob, through the real
    harness: security filter, object checks, ASan+UBSan validation (odd shapes, BT=33 for
    the outer-product form, misaligned pointers, guard bytes, stale-result checks)."""
    combos = covering_sample()
    for knob, values in template.KNOBS.items():
        assert {c[knob] for c in combos} == set(values), knob
    # the outer kernel's staged form (more than STAGE_ABOVE weight rows: AVX-512, 1x24),
    # for 16..31 tokens and from 32 on, which the sample above happens not to reach
    staged = {**template.DEFAULTS, "large": "outer16", "tile": "1x24", "kc": 256}
    assert "tile[" in template.render(staged)
    validate_all(combos + [staged], tmp_path, sanitize=True)


@pytest.mark.skipif(not os.environ.get("RATCHET_ALL_KNOBS"),
                    reason="every combination takes minutes; set RATCHET_ALL_KNOBS=1")
def test_template_every_combination_passes_validation(tmp_path: Path) -> None:
    validate_all(template.combinations(), tmp_path, sanitize=True)


def test_template_rejects_unknown_knobs() -> None:
    with pytest.raises(ValueError):
        template.render({"rows": 5})
    with pytest.raises(ValueError):
        template.render({"unroll": 2})
    src = template.render({})
    assert src.count("matmul_forward(") == 1
    # AVX-512 only in a nested function of its own target, called behind the run-time
    # check (the test with valgrind below shows the rest runs without AVX-512)
    assert '#pragma GCC target("avx2,fma")' in src
    assert src.index('target("avx512f,avx2,fma"))) void wide(') < src.index("_mm512_")
    assert '__builtin_cpu_supports("avx512f")' in src
    assert "avx512f" not in template.render({"simd": "avx2"})


FALLBACK_MAIN = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
void matmul_forward(float*, const float*, const float*, const float*, int, int, int, int);
int main(void) {
    const int shapes[][3] = {{40, 37, 29}, {17, 64, 48}, {3, 9, 7}};
    printf("avx512f=%d\n", __builtin_cpu_supports("avx512f") ? 1 : 0);
    for (int s = 0; s < 3; s++) {
        int BT = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
        float *x = malloc(4 * BT * C), *w = malloc(4 * OC * C), *b = malloc(4 * OC);
        float *o = malloc(4 * BT * OC);
        for (int i = 0; i < BT * C; i++) x[i] = (float)((i * 7919) % 13) / 13.0f - 0.5f;
        for (int i = 0; i < OC * C; i++) w[i] = (float)((i * 104729) % 17) / 17.0f - 0.5f;
        for (int i = 0; i < OC; i++) b[i] = 0.1f * (float)i;
        matmul_forward(o, x, w, b, 1, BT, C, OC);
        for (int r = 0; r < BT; r++)
            for (int k = 0; k < OC; k++) {
                double want = b[k];
                for (int i = 0; i < C; i++) want += (double)x[r * C + i] * w[k * C + i];
                if (fabs(want - o[r * OC + k]) > 1e-3) { printf("wrong\n"); return 1; }
            }
    }
    printf("ok\n");
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
@pytest.mark.parametrize("large", ["outer16", "dot"])
def test_avx512_template_runs_its_fallback_where_avx512_is_missing(
        tmp_path: Path, large: str) -> None:
    """valgrind's CPU has no AVX-512 and stops at any AVX-512 (EVEX) instruction: the
    avx512 rendering must take its AVX2 path there, every instruction of it plain AVX2,
    so the candidate never dies of SIGILL on an AVX2-only host."""
    (tmp_path / "kernel.c").write_text(template.render({"simd": "avx512", "large": large}))
    (tmp_path / "main.c").write_text(FALLBACK_MAIN)
    subprocess.run(["gcc", *cbuild.BASE_FLAGS, "kernel.c", "main.c", "-o", "prog", "-lm"],
                   cwd=tmp_path, check=True, timeout=120)
    native = subprocess.run(["./prog"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert native.stdout.endswith("ok\n"), native.stdout
    proc = subprocess.run(["valgrind", "-q", "--error-exitcode=3", "./prog"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "avx512f=0\nok\n", (
        proc.stdout, proc.stderr[-2000:])


def test_security_allows_the_cpu_check_only_where_the_experiment_does() -> None:
    src = template.render({"simd": "avx512"})
    assert security.check(src) == []
    from ratchetloop.harness.csecurity import check_c_source
    assert any("__builtin_cpu_supports" in r for r in check_c_source(src))
    assert "__cpu_model" in TARGET.allowed_imports


# ---------------- security ----------------

@pytest.mark.parametrize("source, reason", [
    ('#include <stdio.h>\n', "header <stdio.h>"),
    ('#include "driver.c"\n', "only #include <header>"),
    ('#define H <stdlib.h>\n#include H\n', "only #include <header>"),
    ("void f(void) { system(\"id\"); }\n", "`system`"),
    ("void f(void) { execve(0, 0, 0); }\n", "`execve`"),
    ("void f(void) { fopen(\"x\", \"w\"); }\n", "`fopen`"),
    ("void f(void) { socket(2, 1, 0); }\n", "`socket`"),
    ("void f(void) { dlopen(0, 0); }\n", "`dlopen`"),
    ("void f(void) { mmap(0, 1, 7, 0, -1, 0); }\n", "`mmap`"),
    ("void f(void) { getenv(\"HOME\"); }\n", "`getenv`"),
    ("void f(void) { syscall(59); }\n", "`syscall`"),
    ("void f(void) { printf(\"s 0 0 1\\n\"); }\n", "`printf`"),
    ("void f(void) { __asm__(\"nop\"); }\n", "inline assembly"),
    ("__attribute__((constructor)) void f(void) {}\n", "constructor"),
    ("__attribute__((destructor)) void f(void) {}\n", "destructor"),
    ("#define P(a, b) a##b\n", "token pasting"),
    ("??=include <stdio.h>\n", "trigraphs"),
    ("%:include <stdio.h>\n", "digraphs"),
    ("void f(void) { sys\\\ntem(\"id\"); }\n", "line continuations"),
    ('_Pragma("GCC poison x")\n', "_Pragma"),
    ("#pragma GCC poison matmul_forward\n", "#pragma GCC poison"),
    ("#pragma omp parallel for\n", "#pragma omp parallel"),
    ("int main(void) { return 0; }\n", "`main`"),
    ("#include_next <stddef.h>\n", "#include_next"),
])
def test_security_rejects_with_reason(source: str, reason: str) -> None:
    reasons = security.check(source)
    assert any(reason in r for r in reasons), reasons


def test_security_accepts_naive_template_and_harmless_pragmas() -> None:
    assert security.check(NAIVE) == []
    ok = ('#pragma GCC optimize("O3,unroll-loops")\n#pragma GCC target("avx2,fma")\n'
          "#pragma GCC unroll 4\n#pragma GCC ivdep\n#pragma omp simd reduction(+:s)\n"
          "#include <immintrin.h>\n#include <string.h> // memcpy\n"
          "/* system(\"x\") in a comment is harmless */\n" + NAIVE)
    assert security.check(ok) == []


def test_security_gives_one_reason_per_rule() -> None:
    reasons = security.check("void f(void) { system(\"a\"); system(\"b\"); fork(); }\n")
    assert len(reasons) == 2


# ---------------- prompt ----------------

def context(**over: object) -> dict:
    base = {
        "experiment_md": (LINEAR / "EXPERIMENT.md").read_text(),
        "target_function": "matmul_forward", "language": "c", "naive_source": NAIVE,
        "incumbent_source": NAIVE, "incumbent_score": 12000.0, "seed_score": 30000.0,
        "unit": "us", "specialists": [], "memory_md": "## Worked\n- blocking",
        "last_failure": None, "iteration": 3,
        "cases": [{"name": "qkv_bt4", "params": {"B": 1, "T": 4, "C": 768, "OC": 2304}}],
    }
    base.update(over)
    return base


def test_prompt_asks_for_one_function_and_a_note() -> None:
    text = prompt.build(context())
    assert "matmul_forward" in text and "```c" in text and "Note:" in text
    assert "x2.50" in text and "qkv_bt4" in text and "blocking" in text
    assert "exactly one function" in text


def test_prompt_shows_last_failure_and_stays_bounded() -> None:
    huge = "x" * 200_000
    text = prompt.build(context(
        incumbent_source=huge, memory_md=huge,
        specialists=[{"case": f"c{i}", "score": 1.0, "source": huge} for i in range(10)],
        last_failure={"kind": "validation_error", "message": "wrong_result: B=1 T=3",
                      "detail": huge}))
    assert "wrong_result: B=1 T=3" in text and "Fix this first" in text
    assert len(text) < 40_000


# ---------------- seed.py ----------------

def test_seed_script_resets_state_and_keeps_winners(exp_repo: Callable[..., Path]) -> None:
    folder = exp_repo("linear")
    (folder / "candidate.c").write_text("/* edited */\n")
    (folder / "SCORES.json").write_text("{}")
    (folder / "MEMORY.md").write_text("old")
    (folder / "runs" / "1").mkdir(parents=True)
    (folder / "winners" / "abc").mkdir(parents=True)
    # run verbatim from the (copied) repo root, like a user would
    repo = folder.parents[1]
    shutil.copytree(ROOT / "src", repo / "src")
    proc = subprocess.run([sys.executable, "experiments/linear/seed.py"], cwd=repo,
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert (folder / "candidate.c").read_text() == NAIVE
    assert not (folder / "MEMORY.md").exists()
    fresh = json.loads((folder / "SCORES.json").read_text())  # empty, with the reset point
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert (fresh["experiment"], fresh["seed"], fresh["rows"], fresh["reset_at"]) == (
        "linear", None, [], head)
    assert not (folder / "runs").exists() and (folder / "winners" / "abc").is_dir()
    assert json.loads((folder / "experiment.json").read_text())["name"] == "linear"


def test_primary_case_steers_sequential_stopping_only_when_timed(tmp_path: Path) -> None:
    spec = load("eval").SPEC
    (tmp_path / "experiment.json").write_text(json.dumps(
        {"cases": [{"name": "a"}, {"name": "b", "primary": True}]}))
    contract = read_contract(tmp_path, spec.contract)
    assert primary_case(contract, ["a", "b"]) == "b"
    assert primary_case(contract, ["a"]) is None


# ---------------- the benchmarks' in-harness OpenBLAS reference ----------------

def _numpy_openblas() -> Path | None:
    import numpy

    found = sorted((Path(numpy.__file__).resolve().parent.parent / "numpy.libs")
                   .glob("libscipy_openblas64_*.so*"))
    return found[0] if found else None


OPENBLAS_REF = ROOT / "benchmarks" / "linear_openblas.c"


def _openblas_link(lib: Path) -> list[str]:
    return [f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}"]


@pytest.mark.skipif(_numpy_openblas() is None, reason="numpy bundles no scipy-openblas64")
def test_openblas_reference_is_timed_in_the_harness(tmp_path: Path) -> None:
    """bench_roofline times numpy's own sgemm as a C implementation linked into a worker
    (cbuild's libs=, for trusted references): it passes the full result check and is
    timed next to naive, on the same buffers, in the same rounds."""
    from ratchetloop.harness.timing import BenchProcess

    lib = _numpy_openblas()
    assert lib is not None
    built = cbuild.build(
        TARGET, [cbuild.Impl("candidate", LINEAR / "naive.c"),
                 cbuild.Impl("OpenBLAS", OPENBLAS_REF)],
        [LINEAR / "driver.c"], tmp_path / "b", check=False,
        libs={"OpenBLAS": _openblas_link(lib)})
    bench = BenchProcess(built.driver, cwd=tmp_path)
    try:
        answers: list[str] = []
        for w in built.workers:
            answers += bench.command(f"impl {w.name} {w.binary}", 60)
        answers += bench.command("seed 7", 60)
        answers += bench.command("case qkv 1 5 64 96 1", 60)
        answers += bench.command("case nobias 2 3 33 17 0", 60)
        answers += bench.command("check", 120)
        assert not [a for a in answers if a.startswith("fail")], answers
        bench.command("calibrate 500 1 2000 1", 120)
        times = [line.split() for line in bench.command("rounds 1", 120)]
    finally:
        bench.close()
    assert {(t[1], t[2]) for t in times} == {("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")}
    assert all(float(t[3]) > 0 for t in times)


OPENBLAS_MAIN = r"""
#include <math.h>
#include <stdio.h>
void matmul_forward(float*, const float*, const float*, const float*, int, int, int, int);
int main(void) {
    static float x[64 * 96], w[96 * 96], b[96], o[64 * 96];
    for (int i = 0; i < 64 * 96; i++) x[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < 96 * 96; i++) w[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < 96; i++) b[i] = 1.0f;
    matmul_forward(o, x, w, b, 1, 64, 96, 96);
    printf("%s\n", isnan(o[0]) ? "nan" : "number");
    return 0;
}
"""


@pytest.mark.skipif(_numpy_openblas() is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs numpy's scipy-openblas64 and two CPUs")
@pytest.mark.parametrize("threads", ["1", "2"])
def test_openblas_reference_refuses_to_run_threaded(tmp_path: Path, threads: str) -> None:
    """The harness pins workers to one CPU and clears their environment, so OpenBLAS runs
    one thread there. Elsewhere a second thread would do work the caller's CPU time
    misses: the reference then writes NaN, which the harness's check rejects."""
    lib = _numpy_openblas()
    assert lib is not None
    (tmp_path / "main.c").write_text(OPENBLAS_MAIN)
    subprocess.run(["gcc", "-O2", str(tmp_path / "main.c"), str(OPENBLAS_REF), "-o",
                    str(tmp_path / "m"), *_openblas_link(lib), "-lm"], check=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads}
    got = subprocess.run([str(tmp_path / "m")], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert got == ("number" if threads == "1" else "nan")
