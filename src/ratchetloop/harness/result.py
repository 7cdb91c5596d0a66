"""Reading request.json, reporting the one EvalResult, and turning faults into Failures.

eval.py raises `HarnessFailure(kind, message, detail, phase)` wherever a candidate fails;
`main()` catches it and reports the failed EvalResult, so the loop always gets exactly one
answer. Any other exception is the harness's own bug and is reported as kind
"harness_error" with the traceback tail (never blamed on the candidate).

The answer goes to the result channel, the file descriptor named by $RATCHET_RESULT_FD
that the sandbox hands to eval.py alone (stdout when run by hand). `protect_evaluator()`,
called first thing by `main()`, keeps that descriptor from every child process and makes
this process non-dumpable, so no process of the same user can read its memory, ptrace it
or reach its descriptors through /proc.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..evaluate import EvalRequest, EvalResult, Failure
from ..seccomp import make_undumpable
from ..status import TimingProgress

DETAIL_LIMIT = 3000


class HarnessFailure(Exception):
    """A candidate fault with everything the model needs to avoid it next time."""

    def __init__(self, kind: str, message: str, detail: str = "", phase: str = "validate"):
        super().__init__(message)
        self.kind = kind
        self.message = one_line(message)
        self.detail = detail
        self.phase = phase

    def to_failure(self) -> Failure:
        return Failure(kind=self.kind, message=self.message, detail=clip(self.detail))


def one_line(text: str, limit: int = 300) -> str:
    """First non-empty line, trimmed: SCORES and MEMORY rows stay one line each."""
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return text.strip()[:limit]


def clip(text: str, limit: int = DETAIL_LIMIT) -> str:
    """Keep the head of a log (first errors are the useful ones) within `limit` chars."""
    return text if len(text) <= limit else text[:limit] + "\n[... truncated]"


def tail(text: str, limit: int = DETAIL_LIMIT) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def kill_now(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a benchmark process that may already be gone, and reap it."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def load_request(path: str | Path) -> EvalRequest:
    return EvalRequest.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


RESULT_FD_VAR = "RATCHET_RESULT_FD"


def result_fd() -> int | None:
    """The result channel's descriptor, when the sandbox gave us one."""
    value = os.environ.get(RESULT_FD_VAR, "")
    return int(value) if value.isdigit() else None


def protect_evaluator() -> None:
    """Keep the verdict out of reach: result fd not inherited, this process not dumpable."""
    fd = result_fd()
    if fd is not None:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass
    make_undumpable()


def emit(result: EvalResult) -> None:
    """Report the result as ONE JSON document: on the result channel (then closed), or as
    the last stdout line when run by hand."""
    data = (result.model_dump_json() + "\n").encode("utf-8")
    fd = result_fd()
    if fd is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)


def report_progress(progress: TimingProgress) -> None:
    """One progress line on the result channel while timing (the loop's live view reads
    it; evaluate.parse_result sets such lines aside): display only, never a verdict. Run
    by hand there is no channel, and nothing is said."""
    fd = result_fd()
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps({"progress": asdict(progress)}) + "\n").encode("utf-8"))
    except OSError:
        pass  # the live view misses a line; the measurement goes on


def failed(exc: HarnessFailure, unit: str = "us", **extra: object) -> EvalResult:
    return EvalResult(ok=False, phase=exc.phase, failure=exc.to_failure(), unit=unit, **extra)


def main(evaluate: Callable[[EvalRequest], EvalResult], argv: list[str] | None = None) -> int:
    """eval.py entry point: read request.json, evaluate, print exactly one result line."""
    argv = sys.argv[1:] if argv is None else argv
    protect_evaluator()
    start = time.monotonic()
    try:
        request = load_request(argv[0] if argv else "request.json")
        result = evaluate(request)
    except HarnessFailure as exc:
        result = failed(exc)
    except Exception as exc:  # noqa: BLE001 - the loop must always get an answer
        result = EvalResult(
            ok=False,
            phase="crash",
            failure=Failure(kind="harness_error", message=f"eval.py error: {exc!r}",
                            detail=tail(traceback.format_exc())),
        )
    result.wall_seconds = time.monotonic() - start
    emit(result)
    return 0
