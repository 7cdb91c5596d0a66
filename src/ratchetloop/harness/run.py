"""One call that a C experiment's eval.py makes: build, validate, time, return EvalResult."""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .. import stability
from ..evaluate import EvalRequest, EvalResult
from ..experiment import Experiment
from . import cbuild
from .cbuild import CTarget, Impl
from .result import HarnessFailure, clip, one_line, tail
from .timing import BenchProcess, measure

# Sanitizer runtime settings: the sandbox sets no RLIMIT_AS (ASan reserves terabytes of
# virtual memory), so resident memory is capped here instead; leaks are not a candidate
# fault for this contract, and the first report must end the run with a known exit code.
ASAN_OPTIONS = ("detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=23:"
                "hard_rss_limit_mb=2048:allocator_may_return_null=1:"
                "detect_stack_use_after_return=0:handle_abort=1:print_summary=1")
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1:exitcode=24"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                     "AddressSanitizer:DEADLYSIGNAL", "ERROR: UndefinedBehaviorSanitizer")


@dataclass
class CExperiment:
    """What eval.py declares about a C experiment; `evaluate` does the rest.

    driver: C file(s) in the experiment folder defining the rl_case_* and rl_validate hooks
    (see c/rl_harness.h). param_order: the case params (from experiment.json) passed to
    rl_case_new as integers, in this order; missing ones take param_defaults.
    """

    target: CTarget
    driver: list[str]
    param_order: list[str]
    param_defaults: dict[str, int] = field(default_factory=dict)
    min_sample_us: float = 500.0
    sample_budget_us: float = 8000.0
    max_batches: int = 5
    clock: str = "cpu"  # "cpu": the benchmark thread's CPU time; "wall": CLOCK_MONOTONIC
    warmup: int = 2
    validate_timeout: float = 60.0
    bench_command_timeout: float = 120.0
    contract: str = "experiment.json"


def load_cases(spec: CExperiment, names: list[str], folder: Path) -> list[tuple[str, list[int]]]:
    exp = Experiment.model_validate(json.loads((folder / spec.contract).read_text("utf-8")))
    by_name = {c.name: c for c in exp.cases}
    out = []
    for name in names:
        if name not in by_name:
            raise HarnessFailure("harness_error", f"unknown case {name!r}", phase="benchmark")
        params = {**spec.param_defaults, **by_name[name].params}
        missing = [k for k in spec.param_order if k not in params]
        if missing:
            raise HarnessFailure("harness_error", f"case {name!r} lacks params {missing}",
                                 phase="benchmark")
        out.append((name, [int(params[k]) for k in spec.param_order]))
    return out


def _contract(spec: CExperiment, folder: Path) -> dict:
    try:
        return dict(json.loads((folder / spec.contract).read_text("utf-8")))
    except (OSError, ValueError):
        return {}


def _unit(spec: CExperiment, folder: Path) -> str:
    return str(_contract(spec, folder).get("unit", "us"))


def _primary(spec: CExperiment, folder: Path, cases: list[str]) -> str | None:
    """The primary case's name if the contract marks one that is being timed."""
    for case in _contract(spec, folder).get("cases", []):
        if case.get("primary") and case.get("name") in cases:
            return str(case["name"])
    return None


def sanitizer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = ASAN_OPTIONS
    env["UBSAN_OPTIONS"] = UBSAN_OPTIONS
    return env


def classify_run(stdout: str, stderr: str, returncode: int, what: str) -> HarnessFailure | None:
    """Map a validation run's output to a Failure: RLFAIL line, sanitizer report, signal."""
    for line in stdout.splitlines():
        if line.startswith("RLFAIL "):
            _, kind, *rest = line.split(" ", 2)
            info = [ln[7:] for ln in stdout.splitlines() if ln.startswith("RLINFO ")]
            detail = line[7:] + ("\nchecks passed before it:\n" + "\n".join(info[-5:])
                                 if info else "")
            return HarnessFailure("validation_error", f"{kind}: {rest[0] if rest else ''}",
                                  detail, phase="validate")
    if any(m in stderr for m in SANITIZER_MARKERS) or returncode in (23, 24):
        return HarnessFailure("sanitizer", sanitizer_headline(stderr),
                              sanitizer_excerpt(stderr), phase="validate")
    if returncode < 0:
        import signal as _signal

        sig = -returncode
        name = _signal.Signals(sig).name if sig in _signal.Signals._value2member_map_ else ""
        return HarnessFailure("crash", f"candidate crashed with signal {sig} {name} during "
                              f"{what}", tail(stderr or stdout), phase="validate")
    if returncode != 0 or "RLOK" not in stdout:
        return HarnessFailure("crash", f"{what} exited {returncode} without a verdict",
                              tail(stderr or stdout), phase="validate")
    return None


def sanitizer_headline(stderr: str) -> str:
    for line in stderr.splitlines():
        if "runtime error:" in line or "ERROR:" in line:
            text = line.split("==", 2)[-1] if line.startswith("==") else line
            return one_line("sanitizer: " + tidy_report(text.strip()))
    return "sanitizer: report without a headline"


def tidy_report(text: str) -> str:
    """Undo the harness's symbol renaming and drop temp paths, so reports read naturally."""
    text = re.sub(r"__rl_(cand|ref\d+)\b", "", text)
    return re.sub(r"(/[^\s:()]+/)+([^/\s:()]+)", r"\2", text)


def sanitizer_excerpt(stderr: str, lines: int = 30) -> str:
    """The first lines of the report (headline, access, stack) — what a model can act on."""
    out = [ln for ln in tidy_report(stderr).splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(out) if "ERROR:" in ln or "runtime error:" in ln), 0)
    return clip("\n".join(out[start:start + lines]))


def validate(build: cbuild.Build, workdir: Path, seed: int, timeout: float,
             index: int | None = None) -> str:
    """Run the sanitizer build's adversarial validation (all impls, or impl `index`)."""
    argv = [str(build.binary), "validate", str(seed)] + ([] if index is None else [str(index)])
    try:
        proc = subprocess.run(argv, cwd=workdir,
                              capture_output=True, text=True, timeout=timeout,
                              env=sanitizer_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HarnessFailure("timeout", f"validation took longer than {timeout:.0f}s "
                             "(infinite loop, or far too slow on tiny shapes?)",
                             phase="validate") from None
    log = proc.stdout + proc.stderr
    problem = classify_run(proc.stdout, proc.stderr, proc.returncode, "validation")
    if problem is not None:
        raise problem
    return log


def evaluate(request: EvalRequest, spec: CExperiment, workdir: Path | None = None) -> EvalResult:
    """Build, validate (sanitizers), check and time the candidate against the references.

    The optimised benchmark build runs in a background thread while the sanitizer build
    validates, so a passing candidate waits for one build, not two."""
    work = Path(workdir or Path.cwd()).resolve()
    build_dir = work / "build"
    impls = [Impl("candidate", work / request.candidate)]
    impls += [Impl(name, work / path) for name, path in request.references.items()]
    drivers = [work / d for d in spec.driver]
    logs: dict[str, str] = {}
    info: dict[str, object] = {"flags": " ".join(cbuild.BASE_FLAGS)}
    exp_unit = _unit(spec, work)
    pool = ThreadPoolExecutor(max_workers=1)
    fast_future = (pool.submit(cbuild.build, spec.target, impls, drivers, build_dir)
                   if request.benchmark else None)
    try:
        if request.validate_candidate:
            san = cbuild.build(spec.target, impls[:1], drivers, build_dir, sanitize=True)
            (work / "build_sanitize.log").write_text(san.log, encoding="utf-8")
            vlog = validate(san, work, request.seed + 1, spec.validate_timeout)
            (work / "validate.log").write_text(vlog, encoding="utf-8")
            logs["validate"] = tail(vlog, 1500)
        if fast_future is None:
            return EvalResult(ok=True, phase="done", unit=exp_unit, logs=logs, info=info)
        fast = fast_future.result()
        (work / "build.log").write_text(fast.log, encoding="utf-8")
        if fast.log.strip():
            logs["build"] = tail(fast.log, 1500)
        cases = load_cases(spec, request.cases, work)
        # Pin after the builds (the compiler wants both cores): the benchmark binary
        # inherits this affinity, so it is not migrated between CPUs mid-sample.
        info["pinned_cpu"] = stability.pin_current_process()
        bench = BenchProcess(fast.binary, cwd=work)
        try:
            timing = measure(bench, cases, fast.impl_names, request.acceptance,
                             lower_is_better=request.lower_is_better, seed=request.seed,
                             min_sample_us=spec.min_sample_us, warmup=spec.warmup,
                             sample_budget_us=spec.sample_budget_us,
                             max_batches=spec.max_batches, clock=spec.clock,
                             primary=_primary(spec, work, request.cases),
                             check=request.validate_candidate,
                             command_timeout=spec.bench_command_timeout)
        finally:
            bench.close()
            if bench.stderr:
                (work / "bench.log").write_text(bench.stderr, encoding="utf-8")
    except HarnessFailure as exc:
        return EvalResult(ok=False, phase=exc.phase, failure=exc.to_failure(), unit=exp_unit,
                          logs=logs, info=info)
    finally:
        pool.shutdown(wait=True)
    info.update(reps=timing.reps, batches_per_sample=timing.batches_per_sample,
                calibration_us=timing.calibration_us,
                timing_seconds=round(timing.seconds, 3), stop_reason=timing.stop_reason,
                batches=timing.batches,
                sample="min over batches_per_sample batch means; a batch = reps calls, "
                       f">= {spec.min_sample_us:g} us, fresh inputs; clock={spec.clock}")
    return EvalResult(ok=True, phase="done", unit=exp_unit, samples=timing.samples,
                      rounds=timing.rounds, logs=logs, info=info)
