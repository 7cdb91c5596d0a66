"""linear experiment evaluator: run by the loop as `python eval.py request.json` in a sandbox.

All the machinery (builds, sanitizer validation, interleaved sequential timing, the result
line) lives in ratchetloop.harness; this file declares the target and the case parameters,
and driver.c holds the matmul-specific cases and adversarial checks.
"""

from __future__ import annotations

from ratchetloop.harness import CExperiment, CTarget, evaluate, main

SIGNATURE = ("void {name}(float* out, const float* inp, const float* weight, "
             "const float* bias, int B, int T, int C, int OC)")

SPEC = CExperiment(
    # __builtin_cpu_supports reads libgcc's CPU model: AVX-512 paths are guarded by it
    target=CTarget("matmul_forward", SIGNATURE, allowed_imports=("__cpu_model",)),
    driver=["driver.c"],
    param_order=["B", "T", "C", "OC", "bias"],
    param_defaults={"bias": 1},
    min_sample_us=500.0,
)

if __name__ == "__main__":
    raise SystemExit(main(lambda request: evaluate(request, SPEC)))
