"""What the model sees for the linear experiment: contract, incumbent, memory, last failure.

Bounded: every variable part is clipped, so the prompt stays within a fixed budget however
long the run (sources ~6 KB each, memory as given, failure detail ~1.5 KB).
"""

from __future__ import annotations

from typing import Any

SOURCE_LIMIT = 6000
DETAIL_LIMIT = 1500
MEMORY_LIMIT = 4000
SPECIALISTS = 2


def _clip(text: str | None, limit: int) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit] + "\n/* ... clipped ... */"


def _fmt(score: float | None, unit: str) -> str:
    return "n/a" if score is None else f"{score:.1f} {unit}"


def build(context: dict[str, Any]) -> str:
    fn = context.get("target_function", "matmul_forward")
    lang = context.get("language", "c")
    unit = context.get("unit", "us")
    parts = [
        f"You are optimising one C function, `{fn}`, in an evaluator-gated loop. Your answer "
        "is compiled, validated adversarially under ASan/UBSan and timed against the current "
        "best; only a proven speedup is kept.",
        "## Experiment\n" + _clip(context.get("experiment_md"), 5000),
    ]
    cases = context.get("cases") or []
    if cases:
        rows = "\n".join(f"- {c['name']}: " + ", ".join(f"{k}={v}" for k, v in
                                                          c.get("params", {}).items())
                         for c in cases)
        parts.append("## Benchmark cases (score = per-round sum of per-call times)\n" + rows)
    best, seed = context.get("incumbent_score"), context.get("seed_score")
    status = f"Current best: {_fmt(best, unit)}; seed baseline: {_fmt(seed, unit)}"
    if best and seed:
        status += f" (x{seed / best:.2f} over the seed)"
    parts.append(f"## Status (iteration {context.get('iteration', 0)})\n{status}.")
    parts.append(f"## Current best implementation\n```{lang}\n"
                 + _clip(context.get("incumbent_source") or context.get("naive_source"),
                         SOURCE_LIMIT) + "\n```")
    for spec in (context.get("specialists") or [])[:SPECIALISTS]:
        parts.append(f"## Best on case {spec['case']} ({_fmt(spec.get('score'), unit)})\n"
                     f"```{lang}\n" + _clip(spec.get("source"), SOURCE_LIMIT // 2) + "\n```")
    memory = _clip(context.get("memory_md"), MEMORY_LIMIT)
    if memory:
        parts.append("## Memory (what worked, what keeps failing, what is unexplored)\n"
                     + memory)
    if context.get("strategy_md"):  # the outer loop's directions (--outer-every)
        parts.append(context["strategy_md"].strip())
    fail = context.get("last_failure")
    if fail:
        parts.append(f"## Your previous attempt failed: {fail.get('kind')}\n"
                     f"{fail.get('message', '')}\n```\n"
                     + _clip(fail.get("detail"), DETAIL_LIMIT) + "\n```\nFix this first.")
    parts.append(
        "## Answer format\n"
        f"Reply with exactly ONE ```{lang} fenced block containing the includes/pragmas you "
        f"need and exactly one function named `{fn}` with the same signature (no other "
        "functions, no main; put helper logic inline). After the block, one line starting "
        "with `Note:` saying what you changed, e.g. `Note: 4x3 register blocking with "
        "AVX2 FMA`. Try one clear idea per attempt."
    )
    return "\n\n".join(parts) + "\n"
