"""Metric helpers for the Python API: each is a callable `metric(target_path) -> float`.

LatencyMetric, CommandNumber (alias AccuracyMetric) and CompositeMetric are plain picklable
objects: the loop pickles them by reference and runs them in a sandboxed child python,
like any metric function. LLMJudge is the exception (`in_process = True`): it never
executes candidate code -- it only sends the file's text to a model -- and it needs the
network and an API key, which the sandbox withholds, so it runs in the loop's process.

The child hands its value to the loop on the sandbox's result channel (generic/child.py).
CommandNumber gives the command it runs a result channel of its own, the same
$RATCHET_RESULT_FD protocol as a run command: when the command writes exactly one number
there, that is the value and its output is not read; two values or garbage there is an
error. `unit` says what a metric measures; LatencyMetric's "s" lets the loop apply its
plausibility rule (a time that falls while the CPU time rises) -- see the docs.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .generic.contract import MetricSpec, read_channel, read_metric
from .proposers.base import ProposalFailed, Usage


class Metric:
    """Base: `in_process` is True only for metrics that never run candidate code.
    `higher_is_better` is the direction api.Loop optimises when not told one; None means
    the metric does not say (Loop then maximises unless told otherwise)."""

    in_process = False
    higher_is_better: bool | None = None
    unit = ""

    def __call__(self, target: str) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


def _run(command: str, target: str, timeout: float) -> subprocess.CompletedProcess[str]:
    argv = command.replace("{target}", target)
    return subprocess.run(argv, shell=True, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(target).parent if Path(target).is_file() else None)


def _run_with_channel(command: str, target: str,
                      timeout: float) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """_run, with a result channel: a pipe whose write end the command gets as fd 3 (the
    sandbox's convention: `>&3` in sh needs a one-digit fd); returns what it wrote there.
    Python opens descriptors close-on-exec, so besides stdio the command gets only fd 3."""
    read_end, write_end = os.pipe()
    try:
        env = {**os.environ, "RATCHET_RESULT_FD": "3"}
        argv = command.replace("{target}", target)
        with subprocess.Popen(argv, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, close_fds=False,
                              preexec_fn=lambda: os.dup2(write_end, 3),
                              cwd=Path(target).parent if Path(target).is_file() else None
                              ) as proc:
            os.close(write_end)
            write_end = -1
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            chunks = []
            os.set_blocking(read_end, False)
            try:
                while chunk := os.read(read_end, 4096):
                    chunks.append(chunk)
                    if sum(map(len, chunks)) > 4096:
                        break
            except BlockingIOError:
                pass
        return subprocess.CompletedProcess(argv, proc.returncode, out, err), b"".join(chunks)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


class LatencyMetric(Metric):
    """Wall time of a command: `warmup` unmeasured runs, then the median of `runs` (robust
    to the odd slow run a shared host makes). Seconds; lower is better. A failing run raises,
    which the loop records as a crash."""

    higher_is_better = False
    unit = "s"

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
    """A number a test command reports: exactly one number on $RATCHET_RESULT_FD when it
    writes there, else the last number it prints, or group 1 of `pattern`. Its direction
    is whatever `higher_is_better` says (None: not declared, so Loop's argument decides)."""

    def __init__(self, command: str, pattern: str | None = None, timeout: float = 300.0,
                 higher_is_better: bool | None = None) -> None:
        self.command, self.timeout, self.higher_is_better = command, timeout, higher_is_better
        self.spec = MetricSpec(kind="regex", pattern=pattern) if pattern else MetricSpec()

    def __call__(self, target: str) -> float:
        proc, channel = _run_with_channel(self.command, target, self.timeout)
        value, why = read_channel(channel)
        if why:
            raise RuntimeError(f"`{self.command}`: {why}")
        if value is None:
            value = read_metric(proc.stdout, self.spec)
        if proc.returncode != 0 or value is None:
            raise RuntimeError(f"`{self.command}` exited {proc.returncode} with no metric: "
                               f"{(proc.stderr or proc.stdout)[-500:]}")
        return value


AccuracyMetric = CommandNumber


class LLMJudge(Metric):
    """A model rates the file against a rubric, on [low, high]; through any proposer
    (a Proposer object or a --model string such as `openai-compatible:m@http://...`).

    Its requests are real spending: each is held to `budget` before it is sent (api.Loop
    shares the run's budget with the judge) and its usage, failed requests included, is
    counted into the budget's totals -- the run's SCORES usage -- and into `usage`."""

    in_process = True
    higher_is_better = True

    def __init__(self, rubric: str, model: Any, scale: tuple[float, float] = (0.0, 10.0)) -> None:
        self.rubric, self.model, self.scale = rubric, model, scale
        self._proposer: Any = None
        self.budget: Any = None  # a ratchetloop.budget.Budget, set by api.Loop
        self.usage = Usage()  # everything this judge has spent

    def proposer(self) -> Any:
        if self._proposer is None:
            if isinstance(self.model, str):
                from .experiment import Experiment
                from .proposers import registry

                # a stub: resolving reads only `prices` and `root`
                stub = Experiment.model_construct(  # type: ignore[call-arg]
                    name="judge", prices={}, root=Path("."))
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
        proposer = self.proposer()
        if self.budget is not None:
            proposer.budget = self.budget  # checked before each request the judge sends
        try:
            proposal = proposer.propose(prompt)
        except ProposalFailed as exc:
            self._count(exc.usage)
            raise
        self._count(proposal.usage)
        reply = proposal.text
        numbers = re.findall(r"[-+]?\d+(?:\.\d+)?", reply)
        if not numbers:
            raise RuntimeError(f"the judge gave no number: {reply[-200:]!r}")
        return min(high, max(low, float(numbers[-1])))

    def _count(self, usage: Usage) -> None:
        self.usage = self.usage + usage
        if self.budget is not None:
            self.budget.record(usage)


class CompositeMetric(Metric):
    """Weighted sum of metrics; give a lower-is-better part a negative weight (so the sum
    is higher-is-better)."""

    higher_is_better = True

    def __init__(self, parts: Sequence[tuple[Any, float]]) -> None:
        if not parts:
            raise ValueError("a composite needs at least one (metric, weight)")
        self.parts = list(parts)

    @property
    def in_process(self) -> bool:  # type: ignore[override]
        return any(getattr(m, "in_process", False) for m, _ in self.parts)

    def __call__(self, target: str) -> float:
        return sum(w * float(m(target)) for m, w in self.parts)
