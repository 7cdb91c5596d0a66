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
  main(evaluate_fn)          read request.json (argv[1]), protect this process, run, report
                             ONE EvalResult on the result channel
  evaluate(request, spec)    object checks -> sanitizer validation in a worker -> one
                             worker per implementation -> checked, interleaved,
                             sequential timing by the trusted driver
  CExperiment, CTarget       the experiment's declaration (function, prototype, driver files,
                             case-parameter order, sample length, timeouts, allowed imports)
  HarnessFailure(kind, message, detail, phase)
                             raise anywhere for a candidate fault; kinds: build_error,
                             validation_error (the message starts with the driver's check:
                             wrong_result, guard_overwrite, stale_result, nan_inf,
                             input_modified, ...), sanitizer, crash, timeout, integrity
                             (object check, forbidden system call, wrong result on a timed
                             call, input changed, work outside the timed batch);
                             harness_error is reserved for our own bugs
  cbuild.build(...)          lower level: the driver and one worker binary per implementation
  timing.BenchProcess / timing.measure
                             lower level: the driver's stdin/stdout timing protocol

C API (c/rl_harness.h; the experiment's driver.c includes "rl_harness.h")
  provided:  rl_rng + rl_next/rl_unit/rl_uniform/rl_fill_uniform/rl_below, rl_now_us,
             rl_buf_alloc/rl_buf_guards_ok/rl_buf_free (arena buffers with canaries and a
             chosen misalignment), rl_fail(kind, fmt, ...), rl_info,
             rl_case_buffer/rl_case_set_user/rl_case_user
  required:  rl_validate(fn, rng)           the adversarial suite; fn is a stub with the
                                            target's prototype that calls the worker
             rl_case_setup(c, params, n)    declare a benchmark case's buffers
             rl_case_fill(c, buf, data, ...) trusted inputs (fresh, or a small change)
             rl_case_call(c, bufs, fn)       one call with those buffers
             rl_case_check(c, bufs, rng, msg, cap)
                                            check one timed call against trusted inputs

Timing method: one sample = the MIN over a few batch means, a batch being `reps` calls,
each with its own inputs and output slot. reps is calibrated once per case on the fastest
implementation so a batch lasts >= `min_sample_us` (and at least 100x the measured cost
of one driver-worker exchange); the number of batches is how many batches of the slowest
implementation fit in `sample_budget_us` (1..`max_batches`). Both counts are per case and
identical for every implementation. Every round times every implementation once per case
and batch, in a freshly shuffled order (seeded from request.seed), so drift hits all of
them alike. The clock is the worker process's CPU time, read by the driver (the worker has
no threads or children to hide work in); cache and memory-bandwidth interference still
shows and is absorbed by the pairing.
"""

from .cbuild import BASE_FLAGS, SANITIZE_FLAGS, Build, CTarget, Impl, build
from .result import HarnessFailure, emit, load_request, main, protect_evaluator
from .run import CExperiment, evaluate
from .timing import BenchProcess, Timing, measure

__all__ = [
    "BASE_FLAGS", "SANITIZE_FLAGS", "BenchProcess", "Build", "CExperiment", "CTarget",
    "HarnessFailure", "Impl", "Timing", "build", "emit", "evaluate", "load_request", "main",
    "measure", "protect_evaluator",
]
