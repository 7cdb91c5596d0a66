"""`ratchet init`: write .ratchet/<tag>/ (experiment.json, program.md, prompt.py, security.py)
in the user's repository, from flags, answers, or an existing research.json."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from .. import gitops
from ..errors import RatchetError
from .contract import GenericSpec, MetricSpec, NamedMetric, explain
from .environment import passed_values

LANGUAGES = {".py": "python", ".c": "c", ".h": "c", ".js": "javascript", ".ts": "typescript",
             ".rs": "rust", ".go": "go", ".sql": "sql", ".md": "markdown", ".sh": "bash"}
STATE_PATTERNS = ("SCORES.*", "MEMORY.*", "runs/", "winners/", "results.tsv", "*.bundle",
                  "branch.json", ".ratchet.lock", "metric*", "__pycache__/", "trials.json",
                  ".ratchet.lock.holder", ".ratchet.status.json")
PROMPT_PY = '''"""What the model sees each iteration (edit freely; default in the package)."""

from ratchetloop.generic.prompting import build_prompt


def build(context: dict) -> str:
    return build_prompt(context)
'''
SECURITY_PY = '''"""Reject a candidate bundle before it runs: return reasons (empty = fine).

The run command always runs in ratchetloop's sandbox; add project rules here.
"""

from ratchetloop.generic.prompting import default_security


def check(source: str) -> list[str]:
    return default_security(source)
'''
PROGRAM_MD = """# Research directives

## Goal
{goal}

## Hypotheses to explore
- (list ideas worth trying)

## Constraints
- keep the behaviour the run command checks intact
"""
FD_SNIPPET = """\
Report the metric on the result channel, so nothing a candidate prints can stand in for it
(add to your benchmark, after it computes `value`):
  Python:  fd = os.environ.get("RATCHET_RESULT_FD")  # import os
           if fd: os.write(int(fd), f"{value}\\n".encode())
  shell:   [ -z "$RATCHET_RESULT_FD" ] || echo "$value" >&"$RATCHET_RESULT_FD"
"""
DEFAULT_ACCEPTANCE = {"min_effect": 0.01, "confidence": 0.95, "min_rounds": 5,
                      "max_rounds": 20, "batch_rounds": 5, "max_seconds": 300}


def from_research_json(path: Path) -> dict[str, Any]:
    """Map an autoresearch-style research.json onto init's keyword arguments."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RatchetError(f"cannot read {path}: {exc}") from None
    direction = str(data.get("metric_direction", "lower")).lower()
    out: dict[str, Any] = {
        "run_command": data.get("run_command"),
        "editable": list(data.get("modifiable_files") or []),
        "readonly": list(data.get("readonly_files") or []),
        "timeout": float(data.get("timeout_seconds", 300)),
        "higher_is_better": direction.startswith(("higher", "max")),
        "tag": data.get("tag"),
        "no_new_dependencies": bool(data.get("no_new_dependencies", False)),
        "setup_check": data.get("setup_check"),
        "trial_seconds": data.get("trial_seconds"),  # a fixed time budget per run
    }
    return {k: v for k, v in out.items() if v is not None}


def init_project(repo: Path, *, tag: str, editable: list[str], run_command: str,
                 readonly: list[str] | None = None, metric: MetricSpec | None = None,
                 higher_is_better: bool = False, timeout: float = 300.0,
                 setup_check: str | None = None, unit: str = "", directives: str | None = None,
                 no_new_dependencies: bool = False, force: bool = False,
                 acceptance: dict[str, Any] | None = None,
                 knobs: dict[str, list[Any]] | None = None, check_command: str | None = None,
                 implausible: str = "flag", metric_is_time: bool | None = None,
                 env: list[str] | None = None,
                 path: Literal["inherit"] | list[str] = "inherit",
                 metrics: dict[str, NamedMetric] | None = None,
                 constraints: list[str] | None = None,
                 trial_seconds: float | None = None, check_only: bool = False) -> Path:
    """Write the contract; refuses to overwrite an existing one unless `force`.
    `check_only`: every check, nothing written (the explorer, before it asks the user).

    `env` names variables passed through to every command (their values are read at run
    time, never written here); `path` is the commands' PATH (see environment.py);
    `metrics` are named secondary metrics and `constraints` bounds a winner must keep
    (constraints.py).
    """
    repo = gitops.repo_root(Path(repo))
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", tag):
        raise RatchetError(f"tag {tag!r}: use letters, digits, '.', '_' or '-'")
    folder = repo / ".ratchet" / tag
    if (folder / "experiment.json").exists() and not force:
        raise RatchetError(f"{folder / 'experiment.json'} exists: pass --force to overwrite")
    missing = [p for p in editable + (readonly or []) if not (repo / p).is_file()]
    if missing:
        raise RatchetError(f"no such file(s) in {repo}: {', '.join(missing)}")
    passed_values(env or [], os.environ)  # bad names and secret values, in one message
    try:
        spec = GenericSpec(tag=tag, editable=editable, readonly=readonly or [],
                           run_command=run_command, metric=metric or MetricSpec(),
                           setup_check=setup_check or None,
                           no_new_dependencies=no_new_dependencies,
                           check_command=check_command or None,
                           implausible=implausible,
                           metric_is_time=metric_is_time, env=list(env or []),
                           path=path, metrics=metrics or {},
                           constraints=list(constraints or []),
                           trial_seconds=trial_seconds)
    except ValidationError as exc:
        raise RatchetError(explain(exc)) from None
    if check_only:
        return folder
    contract: dict[str, Any] = {
        "name": tag,
        "description": f"generic project: {', '.join(editable)} measured by `{run_command}`",
        "target": {"file": "candidate.bundle", "function": "",
                   "language": LANGUAGES.get(Path(editable[0]).suffix, "text")},
        "naive": "seed.bundle",
        "direction": "higher_is_better" if higher_is_better else "lower_is_better",
        "unit": unit,
        "cases": [{"name": "metric"}],
        "timeout_seconds": timeout,
        "acceptance": {**DEFAULT_ACCEPTANCE, **(acceptance or {})},
        "generic": spec.model_dump(mode="json"),
    }
    if knobs:
        contract.update(knobs=knobs, template="template.py")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "experiment.json").write_text(json.dumps(contract, indent=2) + "\n", "utf-8")
    program = folder / "program.md"
    if directives is not None:
        text = Path(directives).read_text("utf-8") if _is_file(directives) else directives
        program.write_text(text.rstrip() + "\n", "utf-8")
    elif not program.exists():
        goal = f"{'Raise' if higher_is_better else 'Lower'} the metric printed by `{run_command}`."
        program.write_text(PROGRAM_MD.format(goal=goal), "utf-8")
    for name, text in (("prompt.py", PROMPT_PY), ("security.py", SECURITY_PY)):
        if force or not (folder / name).exists():
            (folder / name).write_text(text, "utf-8")
    seed = folder / "seed.bundle"
    if not seed.exists():
        from .edits import to_bundle

        seed.write_text(to_bundle({p: (repo / p).read_text("utf-8") for p in editable}), "utf-8")
    exclude_state(repo)
    return folder


def _is_file(text: str) -> bool:
    return "\n" not in text and len(text) < 4096 and Path(text).is_file()


def exclude_state(repo: Path) -> None:
    """Run state (SCORES, MEMORY, runs/, results.tsv...) stays untracked: .git/info/exclude."""
    common = Path(gitops.git(repo, "rev-parse", "--git-common-dir").strip())
    exclude = (common if common.is_absolute() else repo / common) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    current = exclude.read_text("utf-8") if exclude.is_file() else ""
    wanted = [f"/.ratchet/*/{p}" for p in STATE_PATTERNS]
    new = [w for w in wanted if w not in current.splitlines()]
    if new:
        head = "" if not current or current.endswith("\n") else "\n"
        exclude.write_text(current + head + "# ratchetloop run state\n" + "\n".join(new) + "\n",
                           "utf-8")
