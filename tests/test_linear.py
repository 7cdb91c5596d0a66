"""The linear experiment: eval.py end to end, tuner template correctness, security, prompt."""

from __future__ import annotations

import importlib.util
import itertools
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
TARGET = cbuild.CTarget("matmul_forward", (
    "void {name}(float* out, const float* inp, const float* weight, const float* bias, "
    "int B, int T, int C, int OC)"))


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"linear_{name}", LINEAR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


template = load("template")
security = load("security")
prompt = load("prompt")


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
    """Every (simd, oc_block, bt_block) structure, cycling through the other knobs."""
    rest = list(itertools.product(template.KNOBS["unroll"], template.KNOBS["loop_order"],
                                  template.KNOBS["opt"]))
    out = []
    for i, (simd, ob, bb) in enumerate(itertools.product(
            template.KNOBS["simd"], template.KNOBS["oc_block"], template.KNOBS["bt_block"])):
        u, order, opt = rest[i % len(rest)]
        out.append({"simd": simd, "oc_block": ob, "bt_block": bb, "unroll": u,
                    "loop_order": order, "opt": opt})
    return out


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


def test_template_covering_sample_passes_validation(tmp_path: Path) -> None:
    combos = covering_sample()
    assert len(combos) == 24
    for knob, values in template.KNOBS.items():
        assert {c[knob] for c in combos} == set(values)
    validate_all(combos, tmp_path, sanitize=False)


def test_template_edge_code_is_sanitizer_clean(tmp_path: Path) -> None:
    combos = [{**template.DEFAULTS, "unroll": 2},
              {**template.DEFAULTS, "simd": "scalar", "bt_block": 2, "unroll": 2}]
    validate_all(combos, tmp_path, sanitize=True)


@pytest.mark.skipif(not os.environ.get("RATCHET_ALL_KNOBS"),
                    reason="every combination takes minutes; set RATCHET_ALL_KNOBS=1")
def test_template_every_combination_passes_validation(tmp_path: Path) -> None:
    validate_all(template.combinations(), tmp_path, sanitize=True)


def test_template_rejects_unknown_knobs() -> None:
    with pytest.raises(ValueError):
        template.render({"oc_block": 5})
    with pytest.raises(ValueError):
        template.render({"tile": 2})
    src = template.render({})
    assert src.count("matmul_forward(") == 1 and "#pragma GCC target(\"avx2,fma\")" in src


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
