"""The benchmark cases an eval.py times, read from the experiment's own contract.

Shared by the C and the Python harness: the contract (experiment.json in the work dir),
each case's parameters in the order the experiment passes them, and the primary case that
steers sequential stopping when the contract marks one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .result import HarnessFailure


def read_contract(folder: Path, name: str = "experiment.json") -> dict[str, Any]:
    """The contract as a dict ({} when unreadable: the loop validated it before)."""
    try:
        return dict(json.loads((folder / name).read_text("utf-8")))
    except (OSError, ValueError):
        return {}


def case_params(contract: Mapping[str, Any], names: Sequence[str], order: Sequence[str],
                defaults: Mapping[str, Any] | None = None) -> list[tuple[str, list[Any]]]:
    """(case name, its params in `order`) for each requested case; a case that is unknown
    or lacks a parameter is the harness's own error, not the candidate's."""
    by_name = {c.get("name"): c for c in contract.get("cases", [])}
    out = []
    for name in names:
        if name not in by_name:
            raise HarnessFailure("harness_error", f"unknown case {name!r}", phase="benchmark")
        params = {**(defaults or {}), **by_name[name].get("params", {})}
        missing = [k for k in order if k not in params]
        if missing:
            raise HarnessFailure("harness_error", f"case {name!r} lacks params {missing}",
                                 phase="benchmark")
        out.append((name, [params[k] for k in order]))
    return out


def primary_case(contract: Mapping[str, Any], cases: Sequence[str]) -> str | None:
    """The primary case's name if the contract marks one that is being timed."""
    for case in contract.get("cases", []):
        if case.get("primary") and case.get("name") in cases:
            return str(case["name"])
    return None
