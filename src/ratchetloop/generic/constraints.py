"""Named secondary metrics and the constraints a candidate must keep (`peak_rss_mb<=512`).

The primary metric decides "better"; a constraint only vetoes. A candidate that improves
the primary metric while breaking a constraint is rejected with failure kind `constraint`,
naming the metric, its value and the bound, so memory (and the model) learn why.

Where the values come from
--------------------------
* built-in, measured by the sandbox from outside the command (a candidate cannot print
  them): `wall_seconds` (the run's wall time, sandbox start included: ~10-60 ms),
  `cpu_seconds` (user + system CPU of the whole process tree) and `peak_rss_mb` (the
  largest resident set any one process of the tree reached, getrusage(RUSAGE_CHILDREN) of
  the sandbox's init after it reaped the tree; a floor of about 10 MiB: even `true`
  reports that much, as a process started by the init's Python begins with its size);
* declared, `generic.metrics` (name -> MetricSpec): read from the run's output like an
  output metric. These are as trustworthy as the output: a candidate in the benchmark's
  process can print a line of its own. Constrain the built-ins where that matters.

A constraint is judged on the median of the candidate's runs in one evaluation (a single
noisy run does not veto a candidate; a candidate that breaks the bound on most runs is
out). A run that does not report a constrained metric breaks the constraint: a candidate
cannot escape a bound by no longer printing the number.
"""

from __future__ import annotations

import math
import operator
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

BUILTIN = ("wall_seconds", "cpu_seconds", "peak_rss_mb")
PRIMARY = "metric"  # the primary metric's name in a constraint
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONSTRAINT = re.compile(
    rf"\s*(?P<name>{NAME.pattern})\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<bound>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)\s*")
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Constraint:
    name: str
    op: str
    bound: float

    def holds(self, value: float | None) -> bool:
        return value is not None and OPS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.bound:g}"


def parse(text: str, known: Sequence[str]) -> Constraint:
    """`name<=number` (also <, >=, >); ValueError naming what is wrong, never a guess."""
    match = CONSTRAINT.fullmatch(text)
    if match is None:
        raise ValueError(f"constraint {text!r}: write NAME<=NUMBER (or <, >=, >),"
                         " e.g. 'peak_rss_mb<=512'")
    bound = float(match["bound"])
    if not math.isfinite(bound):
        raise ValueError(f"constraint {text!r}: the bound must be a finite number")
    if match["name"] not in known:
        raise ValueError(f"constraint {text!r}: no metric {match['name']!r} (known:"
                         f" {', '.join(known)})")
    return Constraint(match["name"], match["op"], bound)


def summary(runs: Sequence[Mapping[str, float | None]]) -> dict[str, float]:
    """Median of each named metric over the runs that reported it."""
    names = sorted({name for run in runs for name in run})
    out: dict[str, float] = {}
    for name in names:
        values = [v for run in runs if (v := run.get(name)) is not None]
        if values:
            out[name] = statistics.median(values)
    return out


def broken(constraints: Sequence[Constraint],
           runs: Sequence[Mapping[str, float | None]]) -> list[str]:
    """One reason per broken constraint, judged on the median of the runs; a metric most
    runs did not report breaks it."""
    reasons = []
    for c in constraints:
        values = [run.get(c.name) for run in runs]
        reported = [v for v in values if v is not None]
        if not runs or len(reported) * 2 <= len(values):
            reasons.append(f"{c.name} not reported by {len(values) - len(reported)} of"
                           f" {len(values)} run(s), so {c} cannot hold")
            continue
        median = statistics.median(reported)
        if not c.holds(median):
            reasons.append(f"{c.name}={median:.6g} (median of {len(reported)} run(s))"
                           f" breaks {c}")
    return reasons
