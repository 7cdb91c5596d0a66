"""What the model sees for the attention experiment: contract, best code, specialists, memory.

Order matters: the fixed contract first (cacheable prefix), then the current best and the
per-case specialists (a model that only sees the overall best never learns that another
shape wanted another strategy), then memory and the last failure, then the reply format.
"""

from __future__ import annotations

from typing import Any

from ratchetloop.proposers.base import CACHE_BREAK

MAX_SPECIALISTS = 4
DETAIL_CHARS = 1800


def _fmt(score: Any, unit: str) -> str:
    if score is None:
        return "not measured yet"
    try:
        return f"{float(score):.1f} {unit}"
    except (TypeError, ValueError):
        return f"{score} {unit}"


def _code(source: str) -> list[str]:
    return ["```c", source.strip(), "```"]


def _cases(cases: list[dict[str, Any]]) -> list[str]:
    lines = []
    for case in cases or []:
        p = case.get("params", {})
        desc = ", ".join(f"{k}={v}" for k, v in p.items())
        lines.append(f"- {case.get('name')}: {desc}")
    return lines


def build(context: dict[str, Any]) -> str:
    """Render the prompt from the loop's context dict (see the experiment contract)."""
    unit = context.get("unit", "us")
    fn = context.get("target_function", "attention")
    incumbent = (context.get("incumbent_source") or "").strip()
    naive = (context.get("naive_source") or "").strip()
    # Everything above the cache-break marker is the same in every prompt, so backends that
    # cache prompts (Anthropic) pay for it once.
    parts: list[str] = [context.get("experiment_md", "").strip(), CACHE_BREAK, ""]
    parts += ["## Benchmark cases timed this run", *_cases(context.get("cases") or []), ""]
    parts += [
        f"## Current best (iteration {context.get('iteration', '?')})",
        f"Full-suite time per round: {_fmt(context.get('incumbent_score'), unit)}; "
        f"seed (naive) baseline: {_fmt(context.get('seed_score'), unit)}. "
        "Beat this, proven by paired timing, to be accepted.",
        *_code(incumbent or naive),
        "",
    ]
    if naive and incumbent and naive != incumbent:
        parts += ["## The naive seed (the semantics to preserve)", *_code(naive), ""]
    specialists = [s for s in context.get("specialists") or []
                   if (s.get("source") or "").strip() and s["source"].strip() != incumbent]
    if specialists:
        parts += ["## Per-case specialists",
                  "Fastest accepted code on single cases. Their ideas may combine with the "
                  "overall best:"]
        for spec in specialists[:MAX_SPECIALISTS]:
            parts += ["", f"### {spec.get('case')}: {_fmt(spec.get('score'), unit)}",
                      *_code(spec["source"])]
        parts.append("")
    memory = (context.get("memory_md") or "").strip()
    if memory:
        parts += ["## Memory of this search", memory, ""]
    if context.get("strategy_md"):  # the outer loop's directions (--outer-every)
        parts += [context["strategy_md"].strip(), ""]
    failure = context.get("last_failure")
    if failure:
        detail = (failure.get("detail") or "").strip()
        parts += ["## Your last attempt failed",
                  f"{failure.get('kind', 'failure')}: {failure.get('message', '')}"]
        if detail:
            parts += ["```", detail[-DETAIL_CHARS:], "```"]
        parts += ["Fix the cause; do not resubmit the same code.", ""]
    parts += [
        "## Reply format",
        f"One ```c block: any #include / #pragma lines, then exactly one function `{fn}` "
        "with the signature above (helpers inline or as macros). Keep it correct for every "
        "shape, not only the benchmark ones.",
        "After the block, one line `Note: <what you changed and why it should be faster>`.",
        "Optionally one line `Idea: <something worth trying later>`.",
    ]
    return "\n".join(parts) + "\n"
