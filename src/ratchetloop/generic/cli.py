"""`ratchet init` behind the click command: flags, research.json, or questions on a TTY."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import RatchetError
from .contract import MetricSpec
from .init import FD_SNIPPET, from_research_json, init_project


def init_command(flags: dict[str, Any], cwd: Path | None = None) -> str:
    values: dict[str, Any] = {}
    if flags.get("from_research"):
        values.update(from_research_json(Path(flags["from_research"])))
    given = {
        "tag": flags.get("tag"), "run_command": flags.get("run_command"),
        "timeout": flags.get("timeout") if flags.get("timeout") != 300.0 else None,
        "setup_check": flags.get("setup_check"), "directives": flags.get("directives"),
        "check_command": flags.get("check"),
        "unit": flags.get("unit"),
        "higher_is_better": flags.get("higher_is_better"),
        "editable": list(flags.get("editable") or []) or None,
        "readonly": list(flags.get("readonly") or []) or None,
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
        else:
            values["metric"] = MetricSpec(channel=channel)
        folder = init_project(cwd or Path.cwd(), force=bool(flags.get("force")), **values)
    except ValueError as exc:
        raise RatchetError(str(exc).splitlines()[-1] if str(exc) else "invalid contract") from None
    where = ("the metric is read ONLY from $RATCHET_RESULT_FD (--metric-fd)" if channel == "fd"
             else "the metric is read from $RATCHET_RESULT_FD when your benchmark writes"
                  " there, else from its output")
    check = (f"every winner must pass `{values['check_command']}`"
             if values.get("check_command") else
             "no --check: add one (e.g. your tests) so a winner that games the metric is"
             " caught before it is committed")
    return (f"wrote {folder}/ (experiment.json, program.md, prompt.py, security.py)\n"
            f"{where}; {check}.\n{FD_SNIPPET}"
            f"edit program.md, then: ratchet run {values['tag']} --model <model> --loop 20")


def ask(values: dict[str, Any]) -> None:
    """Fill what is missing: questions on a terminal, a clear error otherwise."""
    needed = {"tag": "tag (a short name)", "editable": "files the model may edit (space-separated)",
              "run_command": "command that prints the metric"}
    missing = [k for k in needed if not values.get(k)]
    if missing and not sys.stdin.isatty():
        flag = {"tag": "--tag", "editable": "--edit", "run_command": "--run"}
        raise RatchetError("missing " + ", ".join(flag[k] for k in missing) +
                           " (or run on a terminal to be asked)")
    for key in missing:
        answer = click.prompt(needed[key])
        values[key] = answer.split() if key == "editable" else answer
    if values.get("higher_is_better") is None:
        values["higher_is_better"] = (sys.stdin.isatty() and
                                      click.confirm("is a higher metric better?", default=False))
