"""fib harness: validate exactly, then time candidate and references interleaved.

Runs inside ratchet's sandbox as `python eval.py request.json` and reports one EvalResult
(on the sandbox's result channel, $RATCHET_RESULT_FD; on stdout when run by hand).

This file is the template for a Python experiment: copy it and change the declaration.
It says only what is specific to fib -- the target function, how a benchmark case's
params (experiment.json) become call arguments, the exact answers, and the inputs to
validate on. ratchetloop.harness.python does the rest, and does it where the candidate
cannot interfere: every implementation runs in its own seccomp-filtered process, its CPU
time is read from outside that process, random timed calls are checked, and this process
alone decides and reports.
"""

from ratchetloop.harness.python import FastOnly, PyExperiment, run

FIB = [0, 1]
while len(FIB) <= 300:
    FIB.append(FIB[-1] + FIB[-2])

SPEC = PyExperiment(
    function="fib",
    param_order=["n"],  # case {"params": {"n": 18}} is timed as fib(18)
    expected=lambda n: FIB[n],  # exact: 832040 is right, 832040.0 and True are not
    validate=[(n,) for n in range(26)],
    # A naive exponential recursion (the seed) would never finish fib(90): the big inputs
    # are checked only for implementations that compute fib(25) in under 1 ms of CPU.
    fast_only=FastOnly(probe=(25,), max_cpu_ms=1.0, inputs=[(90,), (150,), (300,)]),
)

if __name__ == "__main__":
    raise SystemExit(run(SPEC))
