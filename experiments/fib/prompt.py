"""What the model sees for the fib demo."""

from ratchetloop.fmt import significant
from ratchetloop.proposers.base import CACHE_BREAK


def _fmt(value: float | None, unit: str) -> str:
    return "unmeasured" if value is None else f"{significant(value)} {unit}"


def build(context: dict) -> str:
    failure = context.get("last_failure")
    parts = [
        context["experiment_md"].strip(),
        CACHE_BREAK,  # the stable part ends here: backends that cache prompts pay once
        "",
        f"Current best ({_fmt(context['incumbent_score'], context['unit'])} per suite round;"
        f" seed {_fmt(context['seed_score'], context['unit'])}):",
        "```python",
        context["incumbent_source"].strip(),
        "```",
    ]
    for spec in context.get("specialists") or []:
        parts += ["", f"Best on case {spec['case']} ({_fmt(spec['score'], context['unit'])}),"
                  " though not best overall:", "```python", spec["source"].strip(), "```"]
    parts += [
        "",
        context["memory_md"].strip(),
    ]
    if context.get("strategy_md"):  # the outer loop's directions (--outer-every)
        parts += ["", context["strategy_md"].strip()]
    if failure:
        parts += ["", f"Your last attempt failed ({failure['kind']}): {failure['message']}",
                  failure.get("detail", "")[-800:]]
    parts += ["", "Reply with exactly one ```python block defining `fib`, then one line",
              "`Note: <what you changed>`. Optionally `Idea: <something worth trying later>`."]
    return "\n".join(parts) + "\n"
