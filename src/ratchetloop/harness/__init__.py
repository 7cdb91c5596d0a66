"""Helpers that a C experiment's eval.py imports: build, validate, time, report.

Typical eval.py (the experiment supplies driver.c with the C hooks)::

    from ratchetloop.harness import CExperiment, CTarget, evaluate, main

    SPEC = CExperiment(
        target=CTarget("matmul_forward", "void {name}(float* out, const float* inp, ...)"),
        driver=["driver.c"],
        param_order=["B", "T", "C", "OC"],
    )
    if __name__ == "__main__":
        raise SystemExit(main(lambda request: evaluate(request, SPEC)))

Python API
  main(evaluate_fn)          read request.json (argv[1]), run, print ONE EvalResult JSON line
  evaluate(request, spec)    sanitizer build -> adversarial validation -> optimised build of
                             candidate + all references in one binary -> result check on the
                             benchmark cases -> interleaved sequential timing
  CExperiment, CTarget       the experiment's declaration (function, prototype, driver files,
                             case-parameter order, sample length, timeouts)
  HarnessFailure(kind, message, detail, phase)
                             raise anywhere for a candidate fault; kinds: build_error,
                             validation_error (the message starts with the driver's check:
                             wrong_result, guard_overwrite, stale_result, nan_inf,
                             input_modified, ...), sanitizer, crash, timeout, security;
                             harness_error is reserved for our own bugs
  cbuild.build(...)          lower level: objects with renamed symbols, one linked binary
  timing.BenchProcess / timing.measure
                             lower level: the persistent stdin/stdout timing process

C API (c/rl_harness.h; the driver includes "rl_harness.h")
  provided:  rl_rng + rl_next/rl_unit/rl_uniform/rl_fill_uniform/rl_below, rl_now_us,
             rl_buf_alloc/rl_buf_guards_ok/rl_buf_free (canaries + chosen misalignment),
             rl_fail(kind, fmt, ...) (prints "RLFAIL kind message", exits 3), rl_info
  required:  rl_case_new(params, n, rng)   allocate one benchmark case
             rl_case_refresh(st, rng)       fresh inputs before each timed batch (untimed)
             rl_case_run(st, fn, rep)       one call; perturb an input cheaply when rep > 0
             rl_case_check(st, fn, rng, msg, cap)
                                            result check in the optimised build; on failure
                                            write "<kind> <message>" and return nonzero
             rl_validate(fn, rng)           the adversarial suite; rl_fail on a problem

Timing method: one sample = the MIN over a few batch means, a batch being `reps`
back-to-back calls with fresh inputs. reps is calibrated once per case on the fastest
implementation so a batch lasts >= `min_sample_us`; the number of batches is how many
batches of the slowest implementation fit in `sample_budget_us` (1..`max_batches`). Both
counts are per case and identical for every implementation, so the min is equally biased
for all: preemption and interference only add time and the min of a few short batches
drops most of it, while slow cases (one call longer than the budget) cost one batch. Every
round times every implementation once per case, in a freshly shuffled order (seeded from
request.seed), so drift hits all of them alike.
The clock is the benchmark thread's CPU time by default (CExperiment.clock = "cpu"): the
kernels are single-threaded and time spent descheduled on a shared host is not their
cost; cache and memory-bandwidth interference still shows and is absorbed by the pairing.
"""

from .cbuild import BASE_FLAGS, SANITIZE_FLAGS, Build, CTarget, Impl, build
from .result import HarnessFailure, emit, load_request, main
from .run import CExperiment, evaluate
from .timing import BenchProcess, Timing, measure

__all__ = [
    "BASE_FLAGS", "SANITIZE_FLAGS", "BenchProcess", "Build", "CExperiment", "CTarget",
    "HarnessFailure", "Impl", "Timing", "build", "emit", "evaluate", "load_request", "main",
    "measure",
]
