"""The loop's side of the eval.py contract: stage a work dir, run eval.py sandboxed, parse.

Contract (what every experiment's eval.py honours):
  * it is run as `python eval.py request.json` with the work dir as cwd; the work dir holds
    a copy of the experiment folder (never the original), the candidate source under the
    target's file name, and each reference source under the name given in the request;
  * request.json is an `EvalRequest`; eval.py prints one `EvalResult` JSON object as the
    last line of stdout (and may write more logs to files in the work dir);
  * samples[case][impl] are per-round times (or scores) in the experiment's unit, where
    impl is "candidate" or a reference name; index i of every list is the same round, timed
    interleaved in one process, so the loop can pair them.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from . import benchlock, sandbox
from .experiment import Acceptance, Experiment

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
) -> EvalResult:
    """Evaluate one candidate against named reference sources; never raises for candidate faults."""
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
            )
        result = parse_result(proc)
        result.wall_seconds = proc.wall_seconds
        if keep_workdir is not None:
            _keep_logs(work, keep_workdir)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def parse_result(proc: sandbox.SandboxResult) -> EvalResult:
    """Turn what eval.py printed into an EvalResult; a silent or dead eval.py is a failure."""
    if proc.timed_out:
        return EvalResult(
            ok=False,
            phase="timeout",
            failure=Failure(kind="timeout", message="evaluation exceeded the time limit",
                            detail=_tail(proc.stderr)),
        )
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return EvalResult.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError):
                break
    if proc.signal:
        kind, message = "crash", f"evaluator killed by signal {proc.signal}"
    else:
        kind, message = "harness_error", f"eval.py exited {proc.returncode} without a result"
    return EvalResult(
        ok=False,
        phase="crash",
        failure=Failure(kind=kind, message=message, detail=_tail(proc.stderr or proc.stdout)),
    )


def _tail(text: str, limit: int = 4000) -> str:
    return text[-limit:]


def _keep_logs(work: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in work.glob("*.log"):
        if log.is_symlink() or not log.is_file():
            continue  # a candidate could plant x.log -> a secret; only real files are kept
        shutil.copy2(log, dest / log.name, follow_symlinks=False)
