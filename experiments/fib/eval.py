"""fib harness: validate exactly, then time candidate and references interleaved.

Runs inside ratchet's sandbox as `python eval.py request.json`; prints one EvalResult line.
"""

import importlib.util
import random
import sys
import time
import traceback

from ratchetloop.evaluate import EvalRequest, EvalResult, Failure
from ratchetloop.measure import needs_more_rounds

EXPECTED = [0, 1]
for _ in range(2, 301):
    EXPECTED.append(EXPECTED[-1] + EXPECTED[-2])
CHECK_NS = list(range(0, 26)) + [90, 150, 300]


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fib


def validate(fib) -> str | None:
    for n in CHECK_NS:
        if n > 25 and _exponential(fib):
            break  # a naive recursion would never finish the big checks
        got = fib(n)
        if got != EXPECTED[n]:
            return f"wrong_result: fib({n}) returned {got!r}, expected {EXPECTED[n]}"
    return None


def _exponential(fib) -> bool:
    start = time.perf_counter()
    fib(25)
    return time.perf_counter() - start > 0.001


def time_call(fib, n: int, reps: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            fib(n)
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e6


def calibrate(fib, n: int) -> int:
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fib(n)
        if time.perf_counter() - start > 0.0005 or reps > 1_000_000:
            return reps
        reps *= 4


def main() -> None:
    req = EvalRequest.model_validate_json(open(sys.argv[1]).read())
    impls = {"candidate": req.candidate, **req.references}
    try:
        fns = {name: load(path, f"impl_{i}") for i, (name, path) in enumerate(impls.items())}
    except Exception as exc:  # the candidate failed to import: its problem, reported
        emit(EvalResult(ok=False, phase="build", failure=Failure(
            kind="build_error", message=f"{type(exc).__name__}: {exc}",
            detail=traceback.format_exc()[-1500:])))
        return
    if req.validate_candidate:
        try:
            problem = validate(fns["candidate"])
        except RecursionError:
            problem = "crash: RecursionError"
        except Exception as exc:
            problem = f"crash: {type(exc).__name__}: {exc}"
        if problem:
            kind, _, message = problem.partition(": ")
            emit(EvalResult(ok=False, phase="validate", failure=Failure(
                kind="validation_error", message=f"{kind}: {message}")))
            return
    rng = random.Random(req.seed)
    params = {"fib18": 18, "fib22": 22}
    reps = {(c, name): calibrate(fn, params[c]) for c in req.cases for name, fn in fns.items()}
    samples = {c: {name: [] for name in fns} for c in req.cases}
    start = time.monotonic()
    while True:
        for _ in range(req.acceptance.batch_rounds):
            for case in req.cases:
                order = list(fns)
                rng.shuffle(order)
                for name in order:
                    samples[case][name].append(time_call(fns[name], params[case],
                                                         reps[(case, name)]))
        if not req.references:
            if len(samples[req.cases[0]]["candidate"]) >= req.acceptance.min_rounds:
                break
            continue
        cand = {c: samples[c]["candidate"] for c in req.cases}
        ref = {c: samples[c]["best"] for c in req.cases}
        if not needs_more_rounds(cand, ref, req.acceptance, req.lower_is_better,
                                 time.monotonic() - start):
            break
    rounds = len(samples[req.cases[0]]["candidate"])
    emit(EvalResult(ok=True, samples=samples, rounds=rounds, unit="us"))


def emit(result: EvalResult) -> None:
    print(result.model_dump_json())


if __name__ == "__main__":
    main()
