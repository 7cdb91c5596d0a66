"""The loop's side of the eval.py contract: stage a work dir, run eval.py sandboxed, parse.

Contract (what every experiment's eval.py honours):
  * it is run as `python eval.py request.json` with the work dir as cwd; the work dir holds
    a copy of the experiment folder (never the original), the candidate source under the
    target's file name, and each reference source under the name given in the request;
  * request.json is an `EvalRequest`; eval.py reports exactly one `EvalResult` JSON
    document on the result channel, the file descriptor in $RATCHET_RESULT_FD that the
    sandbox gives eval.py alone (`ratchetloop.harness.main` does this). Its stdout and
    stderr are logs, never read for the verdict: a candidate that reaches them forges
    nothing. Files named *.log in the work dir come back as logs; nothing else does;
  * samples[case][impl] are per-round times (or scores) in the experiment's unit, where
    impl is "candidate" or a reference name; index i of every list is the same round, timed
    interleaved, so the loop can pair them.

The protocol is strict: one document, exactly the requested cases, each with exactly the
candidate and the requested references, every list `rounds` long and finite. Anything
else fails the candidate with kind "integrity". Before it, the harness may write progress
lines, `{"progress": {...}}` (harness.result.report_progress, one per timing batch): the
live view shows them while eval.py runs; they are set aside here and never decide.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from . import benchlock, sandbox
from .experiment import Acceptance, Experiment
from .status import TimingProgress

ARTEFACTS = ("*.log",)  # what eval.py may hand back besides its result
LOG_LIMIT = 1 << 20  # total characters of logs kept from one evaluation
STATE_NAMES = {"SCORES.json", "SCORES.md", "MEMORY.json", "MEMORY.md", "runs", "winners",
               ".ratchet.lock", "__pycache__"}
PACKAGE_SRC = Path(__file__).resolve().parents[1]


class EvalRequest(BaseModel):
    candidate: str
    references: dict[str, str] = Field(default_factory=dict)
    cases: list[str]
    acceptance: Acceptance = Field(default_factory=Acceptance)
    lower_is_better: bool = True
    validate_candidate: bool = True
    benchmark: bool = True
    seed: int = 0


class Failure(BaseModel):
    kind: str  # build_error, validation_error, sanitizer, timeout, crash, harness_error, ...
    message: str  # one line, for SCORES/MEMORY
    detail: str = ""  # log tail shown to the model next time


class EvalResult(BaseModel):
    ok: bool
    phase: str = "done"  # build, validate, benchmark, done
    failure: Failure | None = None
    unit: str = "us"
    samples: dict[str, dict[str, list[float]]] = Field(default_factory=dict)
    rounds: int = 0
    logs: dict[str, str] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    wall_seconds: float = 0.0


def stage_workdir(exp: Experiment, parent: Path | None = None) -> Path:
    """A fresh temp dir with a copy of the experiment's files (state and history left out)."""
    work = Path(tempfile.mkdtemp(prefix=f"ratchet-{exp.name}-", dir=parent))
    for item in exp.root.iterdir():
        if item.name in STATE_NAMES or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, work / item.name, ignore=shutil.ignore_patterns(*STATE_NAMES))
        else:
            shutil.copy2(item, work / item.name)
    return work


def run_eval(
    exp: Experiment,
    candidate_source: str,
    references: dict[str, str],
    *,
    validate: bool = True,
    benchmark: bool = True,
    seed: int = 0,
    keep_workdir: Path | None = None,
    progress: Callable[[TimingProgress], None] | None = None,
) -> EvalResult:
    """Evaluate one candidate against named reference sources; never raises for candidate faults.

    `progress` hears the harness's progress lines while it times (a live view's)."""
    work = stage_workdir(exp)
    try:
        suffix = Path(exp.target.file).suffix
        (work / exp.target.file).write_text(candidate_source, encoding="utf-8")
        ref_files = {}
        for i, (name, source) in enumerate(references.items()):
            fname = f"reference_{i}{suffix}"
            (work / fname).write_text(source, encoding="utf-8")
            ref_files[name] = fname
        request = EvalRequest(
            candidate=exp.target.file,
            references=ref_files,
            cases=[c.name for c in exp.enabled_cases],
            acceptance=exp.acceptance,
            lower_is_better=exp.lower_is_better,
            validate_candidate=validate,
            benchmark=benchmark,
            seed=seed,
        )
        (work / "request.json").write_text(request.model_dump_json(indent=2), encoding="utf-8")
        with benchlock.bench_lock(exp.name):  # never two benchmarks at once on one host
            proc = sandbox.run(
                [sys.executable, "eval.py", "request.json"],
                cwd=work,
                timeout=exp.timeout_seconds,
                env={"PYTHONPATH": str(PACKAGE_SRC)},
                result_channel=True,
                artefacts=ARTEFACTS,
                on_result_line=None if progress is None else _progress_reader(progress),
            )
        result = parse_result(proc, request)
        result.wall_seconds = proc.wall_seconds
        if keep_workdir is not None:
            _keep_logs(work, keep_workdir)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _progress_line(line: str | bytes) -> dict[str, Any] | None:
    """A harness progress line ({"progress": {...}}, harness.result.report_progress)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if isinstance(doc, dict) and set(doc) == {"progress"} and isinstance(doc["progress"], dict):
        return doc["progress"]
    return None


def _progress_reader(progress: Callable[[TimingProgress], None]) -> Callable[[bytes], None]:
    def read(line: bytes) -> None:
        fields = _progress_line(line)
        if fields is not None:
            try:
                progress(TimingProgress(**fields))
            except TypeError:
                pass  # not this version's progress: the view skips it

    return read


def parse_result(proc: sandbox.SandboxResult, request: EvalRequest | None = None) -> EvalResult:
    """The one EvalResult eval.py reported on the result channel; a silent, dead or
    protocol-breaking eval.py is a failure (stdout is never read for the verdict)."""
    if proc.timed_out:
        return _failed("timeout", "timeout", "evaluation exceeded the time limit",
                       _tail(proc.stderr))
    # progress lines (display only) come before the one result document; set them aside
    text = "".join(line for line in (proc.result or b"").decode("utf-8", errors="replace")
                   .splitlines(keepends=True) if _progress_line(line) is None)
    if not text.strip():
        if proc.signal:
            return _failed("crash", "crash", f"evaluator killed by signal {proc.signal}",
                           _tail(proc.stderr or proc.stdout))
        why = proc.error or f"eval.py exited {proc.returncode} without a result"
        return _failed("crash", "harness_error", why, _tail(proc.stderr or proc.stdout))
    try:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        if proc.result_truncated or len(documents) != 1:
            raise ValueError(f"{len(documents)} result documents (exactly one is allowed)")
        result = EvalResult.model_validate(documents[0])
        if request is not None and result.ok and request.benchmark:
            _check_samples(result, request)
    except (ValueError, ValidationError) as exc:
        return _failed("integrity", "integrity", f"evaluator protocol violated: "
                       f"{str(exc).splitlines()[0][:200]}", _tail(text, 2000))
    result.logs = safe_logs(result.logs)
    return result


def _check_samples(result: EvalResult, request: EvalRequest) -> None:
    """Exactly the requested cases and implementations, equally long, finite, non-empty."""
    impls = {"candidate", *request.references}
    if set(result.samples) != set(request.cases):
        raise ValueError(f"samples for cases {sorted(result.samples)}, expected "
                         f"{sorted(request.cases)}")
    for case, by_impl in result.samples.items():
        if set(by_impl) != impls:
            raise ValueError(f"case {case}: samples for {sorted(by_impl)}, expected "
                             f"{sorted(impls)}")
        for impl, values in by_impl.items():
            if len(values) != result.rounds or result.rounds < 1:
                raise ValueError(f"case {case}, {impl}: {len(values)} samples for "
                                 f"{result.rounds} rounds")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"case {case}, {impl}: a sample is not a finite number")


def _failed(phase: str, kind: str, message: str, detail: str) -> EvalResult:
    return EvalResult(ok=False, phase=phase, failure=Failure(kind=kind, message=message,
                                                             detail=detail))


def safe_name(name: str) -> str:
    """A log name that is a plain file name: [A-Za-z0-9_.-], no leading dot, short."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:64] or "log"


def safe_logs(logs: dict[str, str]) -> dict[str, str]:
    """Names made safe and unique, total size capped: they become files under runs/."""
    out: dict[str, str] = {}
    budget = LOG_LIMIT
    for name, text in logs.items():
        key = safe_name(str(name))
        while key in out:
            key = f"{key}_"
        out[key] = str(text)[:max(budget, 0)]
        budget -= len(out[key])
    return out


def _tail(text: str, limit: int = 4000) -> str:
    return text[-limit:]


def _keep_logs(work: Path, dest: Path) -> None:
    """The *.log files the sandbox handed back: plain names, regular files, capped."""
    dest.mkdir(parents=True, exist_ok=True)
    budget = LOG_LIMIT
    for log in sorted(work.glob("*.log")):
        if log.is_symlink() or not log.is_file() or safe_name(log.name) != log.name:
            continue  # a candidate could plant x.log -> a secret; only real files are kept
        data = log.read_bytes()[:max(budget, 0)]
        budget -= len(data)
        (dest / log.name).write_bytes(data)
