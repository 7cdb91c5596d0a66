"""attention experiment evaluator: run by the loop as `python eval.py request.json` in a sandbox.

The shared C harness (ratchetloop.harness) does the builds, the sanitizer validation, the
interleaved sequential timing and the result line. This file declares the target and the
case parameters, and writes attn_shapes.c so driver.c validates the exact benchmark shapes
(and their neighbours) of the cases being timed, including any case switched on later.
"""

from __future__ import annotations

from pathlib import Path

from ratchetloop.evaluate import EvalRequest, EvalResult
from ratchetloop.harness import CExperiment, CTarget, evaluate, main
from ratchetloop.harness.run import load_cases

SIGNATURE = ("void {name}(const float *q, const float *k, const float *v, float *out, "
             "const unsigned char *mask, int batch, int heads, int kv_heads, int t_len, "
             "int s_len, int head_dim, float scale, int causal)")
PARAMS = ["B", "H", "Hkv", "T", "S", "D", "causal"]

SPEC = CExperiment(
    # the tuner's AVX-512 renderings carry an AVX2 copy too; their sanitizer build takes
    # ~15 s of CPU, which a loaded 2-core host can stretch past the 60 s default
    target=CTarget("attention", SIGNATURE, compile_timeout=180.0),
    driver=["driver.c", "attn_shapes.c"],
    param_order=PARAMS,
    param_defaults={"B": 1, "causal": 1},
    validate_timeout=120.0,
)


def shapes_source(shapes: list[list[int]]) -> str:
    """C table of the benchmark shapes for rl_validate (a zero row when there are none)."""
    rows = ", ".join("{" + ", ".join(str(x) for x in s) + "}" for s in shapes) or "{0}"
    return (f"const int attn_shapes[][7] = {{{rows}}};\n"
            f"const int attn_n_shapes = {len(shapes)};\n")


def run(request: EvalRequest, workdir: Path | None = None) -> EvalResult:
    work = Path(workdir or Path.cwd())
    shapes = [params for _, params in load_cases(SPEC, request.cases, work)]
    (work / "attn_shapes.c").write_text(shapes_source(shapes), encoding="utf-8")
    return evaluate(request, SPEC, work)


if __name__ == "__main__":
    raise SystemExit(main(run))
