"""Reading request.json, printing the EvalResult line, and turning faults into Failures.

eval.py raises `HarnessFailure(kind, message, detail, phase)` wherever a candidate fails;
`main()` catches it and prints the failed EvalResult as the last stdout line, so the loop
always gets one parseable answer. Any other exception is the harness's own bug and is
reported as kind "harness_error" with the traceback tail (never blamed on the candidate).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ..evaluate import EvalRequest, EvalResult, Failure

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


def load_request(path: str | Path) -> EvalRequest:
    return EvalRequest.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def emit(result: EvalResult) -> None:
    """Print the result as ONE JSON line, the last thing on stdout (the contract)."""
    sys.stdout.flush()
    sys.stdout.write(result.model_dump_json() + "\n")
    sys.stdout.flush()


def failed(exc: HarnessFailure, unit: str = "us", **extra: object) -> EvalResult:
    return EvalResult(ok=False, phase=exc.phase, failure=exc.to_failure(), unit=unit, **extra)


def main(evaluate: Callable[[EvalRequest], EvalResult], argv: list[str] | None = None) -> int:
    """eval.py entry point: read request.json, evaluate, print exactly one result line."""
    argv = sys.argv[1:] if argv is None else argv
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
