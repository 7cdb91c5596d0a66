"""A fixed time budget per trial: every run gets the same T seconds, so trials compare.

`generic.trial_seconds` (or `ratchet run --trial-seconds T`, or research.json's
`trial_seconds`) does three things:
* the command sees the budget as $RATCHET_TRIAL_SECONDS (a training script reads it and
  stops training in time to evaluate and print its metric);
* at T the command's process group gets SIGTERM (generic/budgeted.py wraps the command
  inside the sandbox and waits for the group), so a script that catches it can report;
* at T + trial_grace_seconds the sandbox's own timeout kills the whole tree (SIGKILL, cgroup).
A run that ends at the budget is a result, not a crash, when it reported its metric (on
the result channel or in its output, as the contract says); without one it is a `timeout`.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import RatchetError
from .contract import GenericSpec

ENV = "RATCHET_TRIAL_SECONDS"
TIMEOUT_EXIT = 124  # what budgeted.py exits with when it had to stop the command
WRAPPER = (Path(__file__).with_name("budgeted.py")).read_text(encoding="utf-8")


def argv(command: str, spec: GenericSpec) -> list[str]:
    """The command line: under generic/budgeted.py (SIGTERM to the command's group at T,
    then waits for the group) when a budget is set; -I so nothing in the run's directory
    or environment can stand in for the wrapper. The wrapper's source goes in with -c (it
    is standard library only): the sandbox may hide where ratchetloop is installed, e.g.
    a checkout under the private /tmp, so it cannot be imported there by name."""
    if spec.trial_seconds is None:
        return ["/bin/sh", "-c", command]
    return [sys.executable, "-I", "-c", WRAPPER, f"{spec.trial_seconds:g}", command]


def env(spec: GenericSpec) -> dict[str, str]:
    """The commands' environment, plus the budget when there is one."""
    base = dict(spec.command_env().env)
    if spec.trial_seconds is not None:
        base[ENV] = f"{spec.trial_seconds:g}"
    return base


def hard_timeout(spec: GenericSpec, timeout: float) -> float:
    """The sandbox's kill: T + grace with a budget, else the contract's timeout_seconds."""
    if spec.trial_seconds is None:
        return timeout
    return spec.trial_seconds + spec.trial_grace_seconds


def at_budget(proc: Any, spec: GenericSpec) -> bool:
    """The run was stopped by its budget (SIGTERM at T, or the kill at T + grace)."""
    return spec.trial_seconds is not None and bool(
        proc.timed_out or proc.returncode == TIMEOUT_EXIT)


def as_finished(proc: Any) -> Any:
    """A run stopped at its budget, read like one that finished: its metric decides."""
    return replace(proc, timed_out=False, returncode=0)


def set_trial_seconds(exp: Any, seconds: float | None) -> None:
    """`ratchet run --trial-seconds T`: overrides the contract's budget for this run."""
    if seconds is None:
        return
    if exp.generic is None:
        raise RatchetError("--trial-seconds applies to generic projects (ratchet init)")
    if not seconds > 0:
        raise RatchetError(f"--trial-seconds must be > 0, not {seconds:g}")
    exp.generic = {**exp.generic, "trial_seconds": float(seconds)}
