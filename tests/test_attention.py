"""attention experiment: every adversarial check catches a candidate built to slip past it,
every tuner rendering is correct, and eval.py works end to end through run_eval."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

from ratchetloop import experiment
from ratchetloop.evaluate import run_eval
from ratchetloop.experiment import Acceptance
from ratchetloop.harness import cbuild
from ratchetloop.harness import run as harness_run
from ratchetloop.harness.cbuild import Impl
from ratchetloop.harness.run import classify_run, sanitizer_env

EXP = Path(__file__).resolve().parents[1] / "experiments" / "attention"
FIXTURES = EXP / "fixtures"
# small benchmark-like shapes keep the suite fast; gqa128 has T >= 128 for the fixture that
# misbehaves only on long sequences
SHAPES = [[1, 12, 12, 32, 32, 64, 1], [1, 12, 4, 128, 128, 64, 1]]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"attention_{name}", EXP / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EVAL = load("eval")
TEMPLATE = load("template")
SECURITY = load("security")
PROMPT = load("prompt")


def build_workers(sources: dict[str, str], tmp: Path, sanitize: bool) -> dict[str, cbuild.Build]:
    """One worker per source (object checks off: these test the validation itself), all
    sharing one driver linked with the attention driver.c."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "attn_shapes.c").write_text(EVAL.shapes_source(SHAPES))
    drivers = [EXP / "driver.c", tmp / "attn_shapes.c"]
    driver = cbuild.build_driver(EVAL.SPEC.target, drivers, tmp)

    def one(item: tuple[int, tuple[str, str]]) -> tuple[str, cbuild.Build]:
        i, (name, text) = item
        path = tmp / f"impl{i}.c"
        path.write_text(text)
        return name, cbuild.build(EVAL.SPEC.target, [Impl("candidate", path)], drivers,
                                  tmp / f"b{i}", sanitize=sanitize, check=False, driver=driver)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, enumerate(sources.items())))


def run_validate(build: cbuild.Build, sanitize: bool = True) -> tuple[str | None, str]:
    """rl_validate on the build's worker; (driver failure kind or None, text)."""
    worker = build.workers[0].binary
    proc = subprocess.run([str(build.driver), "validate", "11", str(worker)],
                          capture_output=True, text=True, timeout=600,
                          env=sanitizer_env() if sanitize else None)
    log = Path(f"{worker}.log").read_text(errors="replace")
    problem = classify_run(proc.stdout, proc.stderr, proc.returncode, "validation", log)
    if problem is None:
        return None, proc.stdout
    return failure_kind(problem.kind, problem.message), problem.message


def failure_kind(kind: str, message: str) -> str:
    """The driver's own kind (wrong_result, masked_row, ...) inside a validation_error."""
    return message.split(":", 1)[0] if kind == "validation_error" else kind


# fixture -> the failure kinds that count as "caught"
CAUGHT = {
    "no_max_subtraction": {"nan_inf_large"},
    "wrong_gqa_mapping": {"wrong_result"},
    "ignores_mask": {"masked_row", "wrong_result"},
    "causal_misaligned": {"wrong_result"},
    "masked_row_nan": {"masked_row"},
    "writes_past_end": {"guard_overwrite", "sanitizer"},
    "reads_past_end": {"sanitizer"},
    "shape_specialised": {"wrong_result"},
    "wrong_on_benchmark_shapes": {"wrong_result"},
    "caches_across_calls": {"nan_inf", "wrong_result"},
    "accumulates_into_output": {"nan_inf", "wrong_result"},
    "scalar_tail_missing": {"wrong_result"},
    "mask_ignored_on_long_rows": {"wrong_result", "masked_row"},
}
ORDER = ["naive", *sorted(CAUGHT)]
Builds = dict[str, dict[str, cbuild.Build]]


@pytest.fixture(scope="module")
def fixture_binaries(tmp_path_factory: pytest.TempPathFactory
                     ) -> dict[str, dict[str, cbuild.Build]]:
    """naive + every fixture, one worker each, per build flavour."""
    sources = {name: (EXP / "naive.c" if name == "naive" else FIXTURES / f"{name}.c")
               .read_text() for name in ORDER}
    return {"san": build_workers(sources, tmp_path_factory.mktemp("san"), sanitize=True),
            "opt": build_workers({n: sources[n] for n in ("caches_across_calls",
                                                          "no_max_subtraction")},
                                 tmp_path_factory.mktemp("opt"), sanitize=False)}


def test_every_fixture_has_an_expectation() -> None:
    assert {p.stem for p in FIXTURES.glob("*.c")} == set(CAUGHT)


def test_naive_passes_the_sanitizer_validation(fixture_binaries: Builds) -> None:
    kind, text = run_validate(fixture_binaries["san"]["naive"])
    assert kind is None, text
    assert "rows checked" in text


@pytest.mark.parametrize("name", sorted(CAUGHT))
def test_validation_catches_fixture(name: str, fixture_binaries: Builds) -> None:
    kind, message = run_validate(fixture_binaries["san"][name])
    assert kind in CAUGHT[name], f"{name}: {kind}: {message}"


def test_caching_fixture_fails_on_the_second_call(fixture_binaries: Builds) -> None:
    kind, message = run_validate(fixture_binaries["opt"]["caches_across_calls"], sanitize=False)
    assert kind is not None and "second call" in message


def test_large_logit_failure_tells_the_model_why(fixture_binaries: Builds) -> None:
    _, message = run_validate(fixture_binaries["opt"]["no_max_subtraction"], sanitize=False)
    assert "subtract the row maximum" in message


# ---------------------------------------------------------------- security

def test_security_allows_naive_and_every_template_rendering() -> None:
    assert SECURITY.check((EXP / "naive.c").read_text()) == []
    for knobs in TEMPLATE.combinations():
        assert SECURITY.check(TEMPLATE.render(knobs)) == [], knobs


@pytest.mark.parametrize("snippet", [
    '#include <stdio.h>\nvoid attention(void) { printf("x"); }',
    '#include "../driver.c"\nvoid attention(void) {}',
    "void attention(void) { system(0); }",
    'void attention(void) { __asm__("nop"); }',
    "__attribute__((constructor)) void attention(void) {}",
    "void attention(void) { static float cache[4]; cache[0] = 1; }",
    "void attention(void) { static const float *last; (void)last; }",
    "float cache[64];\nvoid attention(void) {}",
    "#pragma GCC poison x\nvoid attention(void) {}",
    '#pragma GCC optimize("O3") extra\nvoid attention(void) {}',
    "void attention(void) { FILE *f = 0; (void)f; }",
    "#define J(a, b) a##b\nvoid attention(void) { J(sys, tem)(0); }",
    "%:include <stdio.h>\nvoid attention(void) {}",
    "void attention(void) { sys\\\ntem(0); }",
    "void attention(void) { void *h = dlopen(0, 0); (void)h; }",
    'void attention(void) { _Pragma("GCC poison x") }',
])
def test_security_rejects(snippet: str) -> None:
    assert SECURITY.check(snippet), snippet


def test_security_rejects_the_caching_fixture() -> None:
    reasons = SECURITY.check((FIXTURES / "caches_across_calls.c").read_text())
    assert any("static" in r for r in reasons)


def test_security_keeps_constant_tables() -> None:
    src = "void attention(void) { static const float c[2] = {1.0f, 2.0f}; (void)c; }"
    assert SECURITY.check(src) == []


# ---------------------------------------------------------------- tuner template

def covering_sample() -> list[dict]:
    """Every (simd, softmax) structure once, the other knobs cycling so that every value of
    every knob appears (six renderings: each sanitizer build takes several seconds)."""
    out = []
    for i, (simd, softmax) in enumerate(itertools.product(TEMPLATE.KNOBS["simd"],
                                                          TEMPLATE.KNOBS["softmax"])):
        out.append({"simd": simd, "softmax": softmax,
                    "query_block": TEMPLATE.KNOBS["query_block"][i % 5],
                    "key_block": TEMPLATE.KNOBS["key_block"][i % 3],
                    "rows": TEMPLATE.KNOBS["rows"][(i + i // 2) % 2],
                    # O3 doubles the sanitizer build of the two-core AVX-512 renderings:
                    # it is covered on the smaller ones
                    "opt": "O2" if simd == "avx512" else TEMPLATE.KNOBS["opt"][(i // 2) % 2]})
    return out


def test_contract_declares_the_template_knobs() -> None:
    contract = json.loads((EXP / "experiment.json").read_text())
    assert contract["knobs"] == TEMPLATE.KNOBS
    assert contract["template"] == "template.py"
    sample = covering_sample()
    for name, values in TEMPLATE.KNOBS.items():
        assert {k[name] for k in sample} == set(values), name


def test_contract_times_ctx1024() -> None:
    exp = experiment.load(str(EXP))
    assert "ctx1024" in {c.name for c in exp.enabled_cases}


def test_template_rejects_unknown_knobs() -> None:
    with pytest.raises(ValueError):
        TEMPLATE.render({"key_block": 12})


def validate_combos(combos: list[dict], tmp: Path) -> None:
    """Through the real harness: security filter, object checks (the integrity rules),
    sanitizer build, then the full adversarial validation with the benchmark shapes."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "attn_shapes.c").write_text(EVAL.shapes_source(SHAPES))
    impls = []
    for i, knobs in enumerate(combos):
        src = tmp / f"t{i}.c"
        src.write_text(TEMPLATE.render(knobs))
        assert SECURITY.check(src.read_text()) == [], knobs
        impls.append(Impl("candidate", src))
    builds = cbuild.build_each(EVAL.SPEC.target, impls, [EXP / "driver.c",
                                                          tmp / "attn_shapes.c"],
                               tmp / "b", sanitize=True, check=True)
    for knobs, build in zip(combos, builds, strict=True):
        log = harness_run.validate(build.driver, build.workers[0], tmp, 11, 300)
        assert log.rstrip().endswith("RLOK") and "rows checked" in log, (knobs, log[-800:])


def test_template_covering_sample_passes_sanitizer_validation(tmp_path: Path) -> None:
    combos = covering_sample()
    assert len(combos) == 6
    validate_combos(combos, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RATCHET_FULL_TEMPLATE"),
                    reason="all 360 combinations take many minutes; set RATCHET_FULL_TEMPLATE=1")
def test_every_template_combination_passes_validation(tmp_path: Path) -> None:
    validate_combos(TEMPLATE.combinations(), tmp_path)


def function_code(obj: Path, name: str) -> str:
    """The disassembly of one function of an object file."""
    proc = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)],
                          capture_output=True, text=True, check=True)
    blocks = re.split(r"\n(?=[0-9a-f]+ <)", proc.stdout)
    head = re.compile(rf"[0-9a-f]+ <{re.escape(name)}(\.[\w.]+)?>:")  # core_avx2.1.constprop.0
    return "\n".join(b for b in blocks if head.match(b))


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_avx512_code_runs_only_behind_the_xcr0_guard(tmp_path: Path) -> None:
    """An AVX2-only host must never reach an AVX-512 instruction: those live only in the
    nested core_avx512, which attention calls only when XCR0 says the OS enabled the
    AVX-512 state; attention itself and the AVX2 core use no zmm/opmask register."""
    src = tmp_path / "k.c"
    src.write_text(TEMPLATE.render({**TEMPLATE.DEFAULTS, "simd": "avx512"}))
    obj = tmp_path / "k.o"
    subprocess.run(["gcc", *cbuild.BASE_FLAGS, "-c", str(src), "-o", str(obj)], check=True)
    wide = re.compile(r"%zmm|%k[1-7]\b|\{%k")
    outer, avx2, avx512 = (function_code(obj, n) for n in ("attention", "core_avx2",
                                                            "core_avx512"))
    assert outer and avx2 and avx512
    assert wide.search(avx512)
    assert not wide.search(outer) and not wide.search(avx2)
    assert "xgetbv" in outer
    for other in ("avx2", "scalar"):
        text = TEMPLATE.render({**TEMPLATE.DEFAULTS, "simd": other})
        assert "avx512" not in text and "_xgetbv" not in text


# ---------------------------------------------------------------- eval.py end to end

def quick_experiment() -> experiment.Experiment:
    """The contract with ctx1024 switched off: the naive kernel takes ~0.6 s per call
    there, and these tests are about the plumbing, which the small cases show as well."""
    exp = experiment.load(str(EXP))
    exp.acceptance = Acceptance(min_rounds=3, max_rounds=3, batch_rounds=3, max_seconds=30)
    for case in exp.cases:
        case.enabled = case.name != "ctx1024"
    return exp


def test_eval_naive_vs_naive_returns_paired_samples_per_case() -> None:
    exp = quick_experiment()
    naive = exp.naive_path.read_text()
    result = run_eval(exp, naive, {"incumbent": naive})
    assert result.ok, result.failure
    assert set(result.samples) == {c.name for c in exp.enabled_cases}
    assert "ctx1024" not in result.samples  # switched off by quick_experiment
    for case, by_impl in result.samples.items():
        assert set(by_impl) == {"candidate", "incumbent"}
        assert len(by_impl["candidate"]) == len(by_impl["incumbent"]) == result.rounds >= 3
        assert all(t > 0 for t in by_impl["candidate"] + by_impl["incumbent"]), case
    # the bigger case costs more than the small one for the same code
    med = {c: sorted(v["candidate"])[len(v["candidate"]) // 2] for c, v in result.samples.items()}
    assert med["ctx256"] > med["ctx32"]


def test_eval_rejects_a_wrong_candidate_before_timing() -> None:
    exp = quick_experiment()
    bad = (FIXTURES / "wrong_gqa_mapping.c").read_text()
    result = run_eval(exp, bad, {"incumbent": exp.naive_path.read_text()})
    assert not result.ok
    assert result.phase == "validate"
    assert result.failure is not None
    assert failure_kind(result.failure.kind, result.failure.message) == "wrong_result"
    assert not result.samples


def test_shapes_source_lists_enabled_cases() -> None:
    text = EVAL.shapes_source([[1, 2, 1, 3, 4, 5, 1]])
    assert "{1, 2, 1, 3, 4, 5, 1}" in text and "attn_n_shapes = 1;" in text
    assert "attn_n_shapes = 0;" in EVAL.shapes_source([])


# ---------------------------------------------------------------- prompt and seed

def test_prompt_shows_best_specialists_memory_and_failure() -> None:
    naive = (EXP / "naive.c").read_text()
    best = TEMPLATE.render(TEMPLATE.DEFAULTS)
    special = TEMPLATE.render({**TEMPLATE.DEFAULTS, "query_block": 1})
    text = PROMPT.build({
        "experiment_md": (EXP / "EXPERIMENT.md").read_text(), "target_function": "attention",
        "language": "c", "naive_source": naive, "incumbent_source": best,
        "incumbent_score": 812.5, "seed_score": 9000.0, "unit": "us",
        "specialists": [{"case": "ctx32", "score": 40.2, "source": special},
                        {"case": "ctx256", "score": 500.0, "source": best}],
        "memory_md": "- worked: online softmax", "iteration": 7,
        "last_failure": {"kind": "nan_inf_large", "message": "row max", "detail": "RLFAIL x"},
        "cases": [{"name": "ctx32", "params": {"T": 32}}],
    })
    assert "812.5 us" in text and "9000.0 us" in text
    assert "### ctx32: 40.2 us" in text and special.strip() in text
    assert "### ctx256" not in text  # same code as the overall best: not repeated
    assert "online softmax" in text and "nan_inf_large" in text and "RLFAIL x" in text
    assert "exactly one function `attention`" in text


def test_seed_script_resets_a_copy(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXP.parents[1] / "src", repo / "src")
    shutil.copytree(EXP, repo / "experiments" / "attention",
                    ignore=shutil.ignore_patterns("runs", "winners", "SCORES.*", "MEMORY.*"))
    folder = repo / "experiments" / "attention"
    (folder / "candidate.c").write_text("/* stale */\n")
    (folder / "runs").mkdir()
    proc = subprocess.run([sys.executable, "experiments/attention/seed.py"], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "candidate.c").read_text() == (folder / "naive.c").read_text()
    assert not (folder / "runs").exists()
