"""One call that a C experiment's eval.py makes: build, validate, time, return EvalResult.

The trusted pieces are this process (eval.py, which alone holds the result channel) and
the driver binary it starts (which alone makes inputs, checks outputs and takes times);
every implementation runs in a worker process of its own under seccomp. See
c/rl_driver.c and c/rl_worker.c for what each side does, and cbuild.py for the checks on
the candidate's object before anything runs.
"""

from __future__ import annotations

import os
import re
import signal as signal_mod
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .. import stability
from ..evaluate import EvalRequest, EvalResult
from ..files import read_text_or_empty
from . import cbuild
from .cases import case_params, primary_case, read_contract
from .cbuild import CTarget, Impl
from .result import HarnessFailure, clip, one_line, report_progress, tail
from .timing import BenchProcess, measure

# Sanitizer runtime settings. No RLIMIT_AS (ASan reserves terabytes of virtual memory);
# the sandbox's memory cgroup caps real memory. No option that starts a thread (the
# worker's seccomp filter refuses threads) and no symbolizer process (it would be refused
# too): reports carry module offsets, symbolised afterwards with addr2line, out here.
ASAN_OPTIONS = ("detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=23:"
                "allocator_may_return_null=1:detect_stack_use_after_return=0:"
                "handle_abort=1:print_summary=1:symbolize=0")
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1:exitcode=24:symbolize=0"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                     "AddressSanitizer:DEADLYSIGNAL", "ERROR: UndefinedBehaviorSanitizer")
FRAME = re.compile(r"(#\d+ 0x[0-9a-f]+) +\(([^()+]+)\+(0x[0-9a-f]+)\)")


@dataclass
class CExperiment:
    """What eval.py declares about a C experiment; `evaluate` does the rest.

    driver: C file(s) in the experiment folder defining rl_validate and the rl_case_*
    hooks (see c/rl_harness.h). param_order: the case params (from experiment.json)
    passed to rl_case_setup as integers, in this order; missing ones take param_defaults.
    """

    target: CTarget
    driver: list[str]
    param_order: list[str]
    param_defaults: dict[str, int] = field(default_factory=dict)
    min_sample_us: float = 500.0
    sample_budget_us: float = 8000.0
    max_batches: int = 5
    clock: str = "cpu"  # "cpu": the worker's process CPU time; "wall": the driver's clock
    warmup: int = 2
    validate_timeout: float = 60.0
    bench_command_timeout: float = 120.0
    contract: str = "experiment.json"


def load_cases(spec: CExperiment, names: list[str], folder: Path) -> list[tuple[str, list[int]]]:
    """Each requested case's integer params, in the order driver.c's rl_case_setup reads."""
    contract = read_contract(folder, spec.contract)
    return [(name, [int(p) for p in params]) for name, params in
            case_params(contract, names, spec.param_order, spec.param_defaults)]


def sanitizer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = ASAN_OPTIONS
    env["UBSAN_OPTIONS"] = UBSAN_OPTIONS
    return env


def classify_run(stdout: str, stderr: str, returncode: int, what: str,
                 worker_log: str = "") -> HarnessFailure | None:
    """Map the driver's validation output to a Failure: RLFAIL (a check the driver made),
    RLDEAD (the worker died: sanitizer, crash, forbidden system call, timeout)."""
    for line in stdout.splitlines():
        if line.startswith("RLFAIL "):
            _, kind, *rest = line.split(" ", 2)
            info = [ln[7:] for ln in stdout.splitlines() if ln.startswith("RLINFO ")]
            detail = line[7:] + ("\nchecks passed before it:\n" + "\n".join(info[-5:])
                                 if info else "")
            return HarnessFailure("validation_error", f"{kind}: {rest[0] if rest else ''}",
                                  detail, phase="validate")
        if line.startswith("RLDEAD "):
            _, kind, *rest = line.split(" ", 2)
            message = rest[0] if rest else "the worker died"
            if kind == "sanitizer" or any(m in worker_log for m in SANITIZER_MARKERS):
                return HarnessFailure("sanitizer", sanitizer_headline(worker_log),
                                      sanitizer_excerpt(worker_log), phase="validate")
            info = [ln[7:] for ln in stdout.splitlines() if ln.startswith("RLINFO ")]
            detail = "\n".join([message, *(["checks passed before it:", *info[-5:]]
                                            if info else []), tail(worker_log, 1500)])
            return HarnessFailure(kind, message, detail.strip(), phase="validate")
    if returncode < 0:
        sig = -returncode
        name = signal_mod.Signals(sig).name if sig in signal_mod.Signals._value2member_map_ \
            else ""
        return HarnessFailure("harness_error", f"the driver died with signal {sig} {name} "
                              f"during {what}", tail(stderr or stdout), phase="validate")
    if returncode != 0 or "RLOK" not in stdout:
        return HarnessFailure("harness_error", f"the driver exited {returncode} without a "
                              f"verdict during {what}", tail(stderr or stdout),
                              phase="validate")
    return None


def sanitizer_headline(report: str) -> str:
    for line in report.splitlines():
        if "runtime error:" in line or "ERROR:" in line:
            text = line.split("==", 2)[-1] if line.startswith("==") else line
            return one_line("sanitizer: " + tidy_report(text.strip()))
    return "sanitizer: report without a headline"


def tidy_report(text: str) -> str:
    """Drop temp paths, so reports read naturally."""
    return re.sub(r"(/[^\s:()]+/)+([^/\s:()]+)", r"\2", text)


def symbolize(report: str) -> str:
    """Turn `#0 0x.. (/path/worker+0x1a2b)` frames into functions and lines (addr2line),
    outside the worker, whose filter refused it a symbolizer."""
    frames = FRAME.findall(report)
    by_module: dict[str, list[str]] = {}
    for _, module, offset in frames:
        by_module.setdefault(module, [])
        if offset not in by_module[module]:
            by_module[module].append(offset)
    names: dict[tuple[str, str], str] = {}
    for module, offsets in by_module.items():
        if not Path(module).is_file():
            continue
        try:
            out = subprocess.run(["addr2line", "-f", "-C", "-e", module, *offsets],
                                 capture_output=True, text=True, timeout=20).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            continue
        for k, offset in enumerate(offsets):
            if 2 * k + 1 < len(out) and out[2 * k] != "??":
                names[(module, offset)] = f"in {out[2 * k]} {out[2 * k + 1]}"
    return FRAME.sub(lambda m: f"{m.group(1)} {names[(m.group(2), m.group(3))]}"
                     if (m.group(2), m.group(3)) in names else m.group(0), report)


def sanitizer_excerpt(report: str, lines: int = 30) -> str:
    """The first lines of the report (headline, access, stack) — what a model can act on."""
    out = [ln for ln in tidy_report(symbolize(report)).splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(out) if "ERROR:" in ln or "runtime error:" in ln), 0)
    return clip("\n".join(out[start:start + lines]))


def validate(driver: Path, worker: cbuild.Worker, workdir: Path, seed: int,
             timeout: float) -> str:
    """The experiment's adversarial validation of one worker (the sanitizer candidate)."""
    argv = [str(driver), "validate", str(seed), str(worker.binary)]
    try:
        proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True,
                              timeout=timeout, env=sanitizer_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HarnessFailure("timeout", f"validation took longer than {timeout:.0f}s "
                             "(infinite loop, or far too slow on tiny shapes?)",
                             phase="validate") from None
    log = read_text_or_empty(Path(f"{worker.binary}.log"), limit=200_000)
    problem = classify_run(proc.stdout, proc.stderr, proc.returncode, "validation", log)
    if problem is not None:
        raise problem
    return proc.stdout + proc.stderr



def evaluate(request: EvalRequest, spec: CExperiment, workdir: Path | None = None) -> EvalResult:
    """Build, validate (sanitizers), check and time the candidate against the references.

    The optimised builds and the driver compile while the sanitizer build is made, so a
    passing candidate waits for about one build, not several."""
    work = Path(workdir or Path.cwd()).resolve()
    build_dir = work / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    target = spec.target
    cand = Impl("candidate", work / request.candidate)
    refs = [Impl(name, work / path) for name, path in request.references.items()]
    drivers = [work / d for d in spec.driver]
    logs: dict[str, str] = {}
    contract = read_contract(work, spec.contract)
    unit = str(contract.get("unit", "us"))
    info: dict[str, object] = {"flags": " ".join(cbuild.BASE_FLAGS)}
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            driver_f = pool.submit(cbuild.build_driver, target, drivers, build_dir)
            text, prelog = cbuild.preprocess(target, cand, build_dir, "cand")
            fast_f = pool.submit(cbuild.compile_impl, target, cand, text, build_dir, "cand")
            san_f = pool.submit(cbuild.compile_impl, target, cand, text, build_dir, "cand",
                                True) if request.validate_candidate else None
            ref_fs = [pool.submit(cbuild.compile_impl, target, r, r.source, build_dir,
                                  f"ref{i}") for i, r in enumerate(refs)
                      ] if request.benchmark else []
            fast = fast_f.result()
            san = san_f.result() if san_f is not None else None
            cbuild.check_candidate(target, fast, san)
            if fast.log.strip() or prelog.strip():
                logs["build"] = tail(prelog + fast.log, 1500)
            driver = driver_f.result()
            if san is not None:
                san_worker = cbuild.link_worker(target, san, build_dir, "cand", sanitize=True)
                vlog = validate(driver, san_worker, work, request.seed + 1,
                                spec.validate_timeout)
                (work / "validate.log").write_text(vlog, encoding="utf-8")
                logs["validate"] = tail(vlog, 1500)
            if not request.benchmark:
                return EvalResult(ok=True, phase="done", unit=unit, logs=logs, info=info)
            compiled = [fast] + [f.result() for f in ref_fs]
            workers = list(pool.map(
                lambda kc: cbuild.link_worker(target, kc[1], build_dir,
                                              "cand" if kc[0] == 0 else f"ref{kc[0] - 1}"),
                enumerate(compiled)))
        cases = load_cases(spec, request.cases, work)
        # Pin after the builds (the compiler wants both cores): the driver and its workers
        # inherit this affinity, so a worker is never migrated between CPUs mid-sample.
        info["pinned_cpu"] = stability.pin_current_process()
        bench = BenchProcess(driver, cwd=work)
        try:
            timing = measure(bench, cases, [(w.name, w.binary) for w in workers],
                             request.acceptance, lower_is_better=request.lower_is_better,
                             seed=request.seed, min_sample_us=spec.min_sample_us,
                             warmup=spec.warmup, sample_budget_us=spec.sample_budget_us,
                             max_batches=spec.max_batches, clock=spec.clock,
                             primary=primary_case(contract, request.cases),
                             check=request.validate_candidate,
                             command_timeout=spec.bench_command_timeout,
                             progress=report_progress)
        finally:
            bench.close()
            if bench.stderr:
                (work / "bench.log").write_text(bench.stderr, encoding="utf-8")
    except HarnessFailure as exc:
        return EvalResult(ok=False, phase=exc.phase, failure=exc.to_failure(), unit=unit,
                          logs=logs, info=info)
    info.update(reps=timing.reps, batches_per_sample=timing.batches_per_sample,
                calibration_us=timing.calibration_us, ipc_us=timing.ipc_us,
                timing_seconds=round(timing.seconds, 3), stop_reason=timing.stop_reason,
                batches=timing.batches,
                sample="min over batches_per_sample batch means; a batch = reps calls, each "
                       f"with its own inputs and output slot, >= {spec.min_sample_us:g} us; "
                       f"clock={spec.clock} (the worker process, read by the driver)")
    return EvalResult(ok=True, phase="done", unit=unit, samples=timing.samples,
                      rounds=timing.rounds, logs=logs, info=info)
