"""Default prompt and security hooks for generic projects (init writes thin shims to them)."""

from __future__ import annotations

from typing import Any

from .. import gitops
from ..files import read_text_or_empty
from .contract import spec_of
from .edits import from_bundle

MAX_BUNDLE_BYTES = 2_000_000


def _metric(value: float | None, unit: str) -> str:
    """Six significant digits, as results.tsv shows them: a median such as 4456.907499999999
    is noise past that, and the model should read the number the user reads."""
    text = "not measured" if value is None else f"{value:.6g}"
    return f"{text} {unit}" if unit else text


def build_prompt(context: dict[str, Any]) -> str:
    exp = context["experiment"]
    spec = spec_of(exp)
    repo = gitops.repo_root(exp.root)  # readonly paths are repository-relative
    lang = context["language"]
    direction = "higher" if not exp.lower_is_better else "lower"
    files = from_bundle(context["incumbent_source"])
    parts = [read_text_or_empty(exp.path("program.md")).strip(), "",
             f"Metric: `{spec.run_command}` prints it; {direction} is better."
             f" Current best {_metric(context['incumbent_score'], exp.unit)} (baseline"
             f" {_metric(context['seed_score'], exp.unit)}).", ""]
    for path in spec.readonly:
        parts += [f"Read-only context: {path}", f"```{lang}",
                  read_text_or_empty(repo / path).rstrip(), "```", ""]
    big = []
    for path, text in files.items():
        lines = text.count("\n")
        if lines > spec.edit_blocks_above_lines:
            big.append(path)
        parts += [f"Editable file: {path} ({lines} lines)", f"```{lang}", text.rstrip(), "```", ""]
    parts += [context["memory_md"].strip(), ""]
    if context.get("strategy_md"):  # the outer loop's directions (--outer-every)
        parts += [context["strategy_md"].strip(), ""]
    failure = context.get("last_failure")
    if failure:
        parts += [f"Your last attempt failed ({failure['kind']}): {failure['message']}",
                  failure.get("detail", "")[-800:], ""]
    parts += [
        "Propose ONE change. Edit only the editable files. Reply either with whole files:",
        "File: <path>", f"```{lang}", "<the complete new content>", "```",
        "or with SEARCH/REPLACE blocks (required for " + (", ".join(big) or "files over"
        f" {spec.edit_blocks_above_lines} lines") + "):",
        "<path>", "<<<<<<< SEARCH", "<exact lines to find>", "=======", "<replacement>",
        ">>>>>>> REPLACE",
        "Then one line `Note: <what you changed>`; optionally `Idea: <for later>`.",
        "Equal metric with less code is kept; a tiny gain that adds much code is not.",
    ]
    if spec.no_new_dependencies:
        parts.append("Do not add new dependencies (no new imports of third-party packages).")
    return "\n".join(parts) + "\n"


def default_security(source: str) -> list[str]:
    """The sandbox is the guard; this only refuses absurd candidates."""
    if len(source.encode("utf-8")) > MAX_BUNDLE_BYTES:
        return [f"candidate is larger than {MAX_BUNDLE_BYTES} bytes"]
    return []

