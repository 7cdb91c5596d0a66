"""`ratchet init` behind the click command: flags, research.json, or questions on a TTY."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import RatchetError
from .contract import MetricSpec, NamedMetric
from .init import FD_SNIPPET, from_research_json, init_project

if TYPE_CHECKING:
    from .explore import Exploration

VENV_IN_COMMAND = r"(?:^|[\s;&|(=])(?:\./)?\.?venv/bin/"  # a repo venv by a relative path


def init_command(flags: dict[str, Any], cwd: Path | None = None) -> str:
    from pydantic import ValidationError

    from .contract import explain

    values: dict[str, Any] = {}
    if flags.get("from_research"):
        values.update(from_research_json(Path(flags["from_research"])))
    found = explored(flags, cwd)  # --explore: the model's proposal, flags override it
    if found is not None:
        values.update(found.values)
    given = {
        "tag": flags.get("tag"), "run_command": flags.get("run_command"),
        "timeout": flags.get("timeout") if given_explicitly("timeout") else None,
        "env": list(flags.get("env") or []) or None,
        "setup_check": flags.get("setup_check"), "directives": flags.get("directives"),
        "check_command": flags.get("check"),
        "unit": flags.get("unit"),
        "higher_is_better": flags.get("higher_is_better"),
        "editable": list(flags.get("editable") or []) or None,
        "readonly": list(flags.get("readonly") or []) or None,
        "metrics": named_metrics(flags.get("named_metric") or ()) or None,
        "constraints": list(flags.get("constraint") or []) or None,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    ask(values)
    channel = "fd" if flags.get("metric_fd") else "auto"
    try:
        if flags.get("metric_regex"):
            values["metric"] = MetricSpec(kind="regex", pattern=flags["metric_regex"],
                                          channel=channel)
        elif flags.get("metric_json"):
            values["metric"] = MetricSpec(kind="json_key", key=flags["metric_json"],
                                          channel=channel)
        elif isinstance(values.get("metric"), MetricSpec):  # proposed by --explore
            if channel == "fd":
                values["metric"] = values["metric"].model_copy(update={"channel": "fd"})
        else:
            values["metric"] = MetricSpec(channel=channel)
        if found is not None:
            from .explore import ask_on_terminal, write

            folder = write(found, values, cwd or Path.cwd(), force=bool(flags.get("force")),
                           confirm=ask_on_terminal(bool(flags.get("yes"))))
        else:
            folder = init_project(cwd or Path.cwd(), force=bool(flags.get("force")), **values)
    except ValidationError as exc:
        raise RatchetError(explain(exc)) from None
    channel = values["metric"].channel
    where = ("the metric is read ONLY from $RATCHET_RESULT_FD (--metric-fd)" if channel == "fd"
             else "the metric is read from $RATCHET_RESULT_FD when your benchmark writes"
                  " there, else from its output")
    check = (f"every winner must pass `{values['check_command']}`"
             if values.get("check_command") else
             "no --check: add one (e.g. your tests) so a winner that games the metric is"
             " caught before it is committed")
    return (f"{explore_lines(found)}"
            f"wrote {folder}/ (experiment.json, program.md, prompt.py, security.py)\n"
            f"{where}; {check}.\n{environment_lines(folder, values)}{FD_SNIPPET}"
            f"edit program.md, then: ratchet run {values['tag']} --model <model> --loop 20")


def explored(flags: dict[str, Any], cwd: Path | None) -> Exploration | None:
    """`--explore --model M`: the model's proposal (explore.py); None without --explore."""
    if not flags.get("explore"):
        if flags.get("model") or flags.get("yes"):
            raise RatchetError("--model and --yes go with --explore")
        return None
    if flags.get("from_research"):
        raise RatchetError("--explore or --from-research: give one")
    from .. import gitops
    from .explore import explore

    tag = flags.get("tag")
    if tag and not flags.get("force"):  # refused before any request is paid for
        existing = gitops.repo_root(cwd or Path.cwd()) / ".ratchet" / tag / "experiment.json"
        if existing.exists():
            raise RatchetError(f"{existing} exists: pass --force to overwrite")
    return explore(cwd or Path.cwd(), flags.get("model"), tag=tag)


def explore_lines(found: Exploration | None) -> str:
    """What the explorer did, before the usual lines: its setup check and its cost."""
    if found is None:
        return ""
    setup = found.setup
    check = (f"setup check `{setup['command']}` passed\n" if setup else
             "no setup check proposed: `ratchet run` starts without one\n")
    return f"{check}{found.cost_line()} (prompts and replies in explore.json)\n"


def named_metrics(specs: Sequence[str]) -> dict[str, NamedMetric]:
    """`--named-metric NAME=REGEX` (repeatable): a secondary metric read from the output,
    group 1 of the regex's last match; anything else is one clear message."""
    from pydantic import ValidationError

    from .contract import explain

    out: dict[str, NamedMetric] = {}
    for text in specs:
        name, eq, pattern = text.partition("=")
        if not eq or not name.strip() or not pattern:
            raise RatchetError(f"--named-metric {text!r}: write NAME=REGEX, e.g."
                               " 'peak_memory_gb=peak_memory_gb:\\s*(\\S+)'")
        if name.strip() in out:
            raise RatchetError(f"--named-metric: {name.strip()!r} is given twice")
        try:
            out[name.strip()] = NamedMetric(kind="regex", pattern=pattern)
        except ValidationError as exc:
            raise RatchetError(f"--named-metric {name.strip()}: {explain(exc)}") from None
    return out


def given_explicitly(name: str) -> bool:
    """Whether a `ratchet init` option was given, even when equal to its default (an explicit
    --timeout 300 must win over research.json). Outside click: whatever the caller passed."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None or name not in ctx.params:
        return True
    source = ctx.get_parameter_source(name)
    return source is not None and source not in (ParameterSource.DEFAULT,
                                                 ParameterSource.DEFAULT_MAP)


def environment_lines(folder: Path, values: dict[str, Any]) -> str:
    """Which python the commands get, what is passed, and a .venv path that cannot work."""
    import os
    import re

    from .environment import describe, resolve_path

    resolved = resolve_path("inherit", folder.parents[1], os.environ)
    lines = [describe(resolved)]
    names = values.get("env") or []
    unset = [n for n in names if n not in os.environ]
    if names:
        lines.append(f"passed to every command (values read at `ratchet run`): {', '.join(names)}"
                     + (f"; not set now: {', '.join(unset)}" if unset else ""))
    commands = [values.get(k) or "" for k in ("run_command", "check_command", "setup_check")]
    if any(re.search(VENV_IN_COMMAND, c) for c in commands):
        lines.append("note: a command names a venv inside the repository by a relative path;"
                     " runs happen in a copy of your tracked files without it: write `python3`"
                     " (the project venv comes first on PATH)")
    return "".join(f"{line}\n" for line in lines)


def ask(values: dict[str, Any]) -> None:
    """Fill what is missing: questions on a terminal, a clear error otherwise."""
    needed = {"tag": "tag (a short name)", "editable": "files the model may edit (space-separated)",
              "run_command": "command that prints the metric"}
    missing = [k for k in needed if not values.get(k)]
    if not sys.stdin.isatty():  # no guessing: a wrong direction ratchets the wrong way
        flag = {"tag": "--tag", "editable": "--edit", "run_command": "--run"}
        flags = [flag[k] for k in missing]
        if values.get("higher_is_better") is None:
            flags.append("--higher-is-better or --lower-is-better")
        if flags:
            raise RatchetError("missing " + ", ".join(flags) + " (or run on a terminal to be"
                               " asked)")
    for key in missing:
        answer = click.prompt(needed[key])
        values[key] = answer.split() if key == "editable" else answer
    if values.get("higher_is_better") is None:
        values["higher_is_better"] = click.confirm("is a higher metric better?", default=False)
