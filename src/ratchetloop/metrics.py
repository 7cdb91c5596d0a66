"""Metric helpers for the Python API: each is a callable `metric(target_path) -> float`.

LatencyMetric, CommandNumber (alias AccuracyMetric) and CompositeMetric are plain picklable
objects: the loop pickles them by reference and runs them in a sandboxed child python,
like any metric function. LLMJudge is the exception (`in_process = True`): it never
executes candidate code -- it only sends the file's text to a model -- and it needs the
network and an API key, which the sandbox withholds, so it runs in the loop's process.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .generic.contract import MetricSpec, read_metric


class Metric:
    """Base: `in_process` is True only for metrics that never run candidate code."""

    in_process = False
    higher_is_better: bool | None = None

    def __call__(self, target: str) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def _run(command: str, target: str, timeout: float) -> subprocess.CompletedProcess[str]:
    argv = command.replace("{target}", target)
    return subprocess.run(argv, shell=True, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(target).parent if Path(target).is_file() else None)


class LatencyMetric(Metric):
    """Wall time of a command: `warmup` unmeasured runs, then the median of `runs` (robust
    to the odd slow run a shared host makes). Seconds; lower is better. A failing run raises,
    which the loop records as a crash."""

    higher_is_better = False

    def __init__(self, command: str, runs: int = 5, warmup: int = 1,
                 timeout: float = 60.0) -> None:
        self.command, self.runs, self.warmup, self.timeout = command, runs, warmup, timeout

    def __call__(self, target: str) -> float:
        times = []
        for i in range(self.warmup + self.runs):
            start = time.perf_counter()
            proc = _run(self.command, target, self.timeout)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"`{self.command}` exited {proc.returncode}: "
                                   f"{(proc.stderr or proc.stdout)[-500:]}")
            if i >= self.warmup:
                times.append(elapsed)
        return statistics.median(times)


class CommandNumber(Metric):
    """A number a test command prints: the last one, or group 1 of `pattern`."""

    def __init__(self, command: str, pattern: str | None = None, timeout: float = 300.0,
                 higher_is_better: bool | None = True) -> None:
        self.command, self.timeout, self.higher_is_better = command, timeout, higher_is_better
        self.spec = MetricSpec(kind="regex", pattern=pattern) if pattern else MetricSpec()

    def __call__(self, target: str) -> float:
        proc = _run(self.command, target, self.timeout)
        value = read_metric(proc.stdout, self.spec)
        if proc.returncode != 0 or value is None:
            raise RuntimeError(f"`{self.command}` exited {proc.returncode} with no metric: "
                               f"{(proc.stderr or proc.stdout)[-500:]}")
        return value


AccuracyMetric = CommandNumber


class LLMJudge(Metric):
    """A model rates the file against a rubric, on [low, high]; through any proposer
    (a Proposer object or a --model string such as `openai-compatible:m@http://...`)."""

    in_process = True
    higher_is_better = True

    def __init__(self, rubric: str, model: Any, scale: tuple[float, float] = (0.0, 10.0)) -> None:
        self.rubric, self.model, self.scale = rubric, model, scale
        self._proposer: Any = None

    def proposer(self) -> Any:
        if self._proposer is None:
            if isinstance(self.model, str):
                from .experiment import Experiment
                from .proposers import registry

                stub = Experiment.model_construct(name="judge", prices={}, root=Path("."))
                self._proposer = registry.resolve(self.model, stub)
            else:
                self._proposer = self.model
        return self._proposer

    def __call__(self, target: str) -> float:
        low, high = self.scale
        text = Path(target).read_text(encoding="utf-8")
        prompt = (f"{self.rubric}\n\nRate the following file from {low:g} to {high:g}."
                  f" Answer with the number alone on the last line.\n\n"
                  f"File {Path(target).name}:\n```\n{text}\n```\n")
        reply = self.proposer().propose(prompt).text
        numbers = re.findall(r"[-+]?\d+(?:\.\d+)?", reply)
        if not numbers:
            raise RuntimeError(f"the judge gave no number: {reply[-200:]!r}")
        return min(high, max(low, float(numbers[-1])))


class CompositeMetric(Metric):
    """Weighted sum of metrics; give a lower-is-better part a negative weight."""

    def __init__(self, parts: Sequence[tuple[Any, float]]) -> None:
        if not parts:
            raise ValueError("a composite needs at least one (metric, weight)")
        self.parts = list(parts)

    @property
    def in_process(self) -> bool:  # type: ignore[override]
        return any(getattr(m, "in_process", False) for m, _ in self.parts)

    def __call__(self, target: str) -> float:
        return sum(w * float(m(target)) for m, w in self.parts)
