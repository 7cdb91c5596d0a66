"""The generic-mode contract (experiment.json's "generic" block) and how a metric is read.

A generic project is an ordinary experiment whose eval step runs the user's command in a
git worktree; this block says which files the model may edit, what it may read, what to
run and how to read one number out of the run's output.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..experiment import Experiment

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricSpec(Strict):
    """last_number: the last number printed; regex: group 1 of the last match; json_key:
    a (dotted) key of the last JSON object line."""

    kind: Literal["last_number", "regex", "json_key"] = "last_number"
    pattern: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> MetricSpec:
        if self.kind == "regex":
            if not self.pattern or re.compile(self.pattern).groups != 1:
                raise ValueError("a regex metric needs a pattern with exactly one group")
        if self.kind == "json_key" and not self.key:
            raise ValueError("a json_key metric needs a key")
        return self


class SizeRule(Strict):
    """Equal metric with simpler code is kept; a tiny gain bought with much more code is not.

    * a candidate whose metric is not worse (verdict "same") is accepted when it removes at
      least `min_removed_pct` percent of the editable files' non-blank lines;
    * a "better" candidate whose gain is below 2 x min_effect is rejected when it adds more
      than `max_added_lines` non-blank lines.
    """

    min_removed_pct: float = Field(10.0, ge=0, le=100)
    max_added_lines: int = Field(20, ge=0)


class GenericSpec(Strict):
    tag: str
    editable: list[str] = Field(min_length=1)
    readonly: list[str] = Field(default_factory=list)
    run_command: str
    metric: MetricSpec = Field(default_factory=MetricSpec)
    setup_check: str | None = None
    fix_attempts: int = Field(2, ge=0, le=5)
    size_rule: SizeRule = Field(default_factory=SizeRule)
    no_new_dependencies: bool = False
    edit_blocks_above_lines: int = Field(
        200, description="files longer than this are edited with SEARCH/REPLACE blocks")


def spec_of(exp: Experiment) -> GenericSpec:
    return GenericSpec.model_validate(exp.generic or {})


def read_metric(output: str, spec: MetricSpec) -> float | None:
    """The metric in a run's output, or None when there is none (a crash, for the loop)."""
    value: Any = None
    if spec.kind == "last_number":
        numbers = NUMBER.findall(output)
        value = numbers[-1] if numbers else None
    elif spec.kind == "regex":
        matches = list(re.finditer(spec.pattern or "", output, re.MULTILINE))
        value = matches[-1].group(1) if matches else None
    else:
        value = _json_key(output, spec.key or "")
    try:
        number = float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _json_key(output: str, key: str) -> Any:
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            node: Any = json.loads(line)
        except json.JSONDecodeError:
            continue
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None
