"""Drive the persistent C benchmark process and stop sampling when the answer is clear.

The benchmark binary (see c/rl_main.c) stays alive for the whole measurement: Python asks
for `batch_rounds` more interleaved rounds at a time and calls
`ratchetloop.measure.needs_more_rounds()` between batches, so an obvious win or loss stops
after `min_rounds` while a close call keeps sampling up to `max_rounds` / `max_seconds`.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..experiment import Acceptance
from ..measure import needs_more_rounds
from .result import HarnessFailure, tail


class BenchProcess:
    """A line-oriented conversation with `<binary> bench`, with a deadline on every answer."""

    def __init__(self, binary: Path, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(binary), "bench"], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1,
            env=dict(env) if env is not None else None,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_chunks: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if sum(map(len, self.stderr_chunks)) < 64_000:
                self.stderr_chunks.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_chunks)

    def command(self, line: str, timeout: float, phase: str = "benchmark") -> list[str]:
        """Send one command; return its answer lines (without the final "ok")."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died(line, phase)
        deadline = time.monotonic() + timeout
        answer: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                got = self.lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                self.kill()
                raise HarnessFailure(
                    "timeout", f"benchmark `{line.split()[0]}` took longer than {timeout:.0f}s",
                    tail(self.stderr), phase=phase) from None
            if got is None:
                self._died(line, phase)
            if got == "ok":
                return answer
            answer.append(got)

    def _died(self, line: str, phase: str) -> None:
        rc = self.proc.wait()
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else ""
            raise HarnessFailure("crash", f"benchmark process killed by signal {-rc} {name}"
                                 f" during `{line.split()[0]}`", tail(self.stderr), phase=phase)
        raise HarnessFailure("crash", f"benchmark process exited {rc} during "
                             f"`{line.split()[0]}`", tail(self.stderr), phase=phase)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit", timeout=5)
            except HarnessFailure:
                pass
        self.kill()


@dataclass
class Timing:
    samples: dict[str, dict[str, list[float]]]
    rounds: int
    reps: dict[str, int]
    calibration_us: dict[str, float]
    seconds: float
    stop_reason: str
    batches: list[dict[str, object]] = field(default_factory=list)
    batches_per_sample: dict[str, int] = field(default_factory=dict)


def measure(
    bench: BenchProcess,
    cases: Sequence[tuple[str, Sequence[int]]],
    impl_names: Sequence[str],
    acceptance: Acceptance,
    *,
    lower_is_better: bool = True,
    seed: int = 0,
    min_sample_us: float = 500.0,
    warmup: int = 2,
    sample_budget_us: float = 8000.0,
    max_batches: int = 5,
    clock: str = "cpu",
    primary: str | None = None,
    check: bool = True,
    command_timeout: float = 120.0,
) -> Timing:
    """Calibrate, check results in the optimised build, then sample in sequential batches.

    impl_names[0] is the candidate, the rest are references (the build's order).
    With references, keeps adding batches while `needs_more_rounds` says the candidate vs
    ANY reference is still unsure (on the primary case if given, else the suite total),
    bounded by max_rounds/max_seconds. Without references (seeding a baseline) it takes
    `min_rounds` rounds (rounded up to whole batches) of the candidate alone.
    """
    start = time.monotonic()
    bench.command(f"seed {int(seed) & 0xFFFFFFFFFFFFFFFF}", command_timeout)
    bench.command(f"clock {'wall' if clock == 'wall' else 'cpu'}", command_timeout)
    for name, params in cases:
        bench.command(f"case {name} " + " ".join(str(int(p)) for p in params), command_timeout)
    reps: dict[str, int] = {}
    calib: dict[str, float] = {}
    per_sample: dict[str, int] = {}
    calibrate = f"calibrate {min_sample_us} {warmup} {sample_budget_us} {max_batches}"
    for line in bench.command(calibrate, command_timeout):
        _, ci, r, fastest, nb = line.split()
        reps[cases[int(ci)][0]] = int(r)
        calib[cases[int(ci)][0]] = float(fastest)
        per_sample[cases[int(ci)][0]] = int(nb)
    if check:
        bad = bench.command("check", command_timeout, phase="validate")
        for line in bad:
            _, impl, ci, msg = line.split(" ", 3)
            who = impl_names[int(impl)]
            kind, _, text = msg.partition(" ")
            where = f"benchmark case {cases[int(ci)][0]} (optimised build)"
            if int(impl) == 0:
                raise HarnessFailure("validation_error", f"{kind}: {where}: {text}",
                                     "\n".join(bad), phase="validate")
            raise HarnessFailure("harness_error", f"reference {who!r} fails {where}: {text}",
                                 "\n".join(bad), phase="validate")
    samples: dict[str, dict[str, list[float]]] = {
        name: {impl: [] for impl in impl_names} for name, _ in cases}
    cand, refs = impl_names[0], list(impl_names[1:])
    rounds = 0
    batches: list[dict[str, object]] = []
    stop = "max_rounds"
    while True:
        elapsed = time.monotonic() - start
        if refs:
            unsure = [r for r in refs if needs_more_rounds(
                {c: samples[c][cand] for c in samples},
                {c: samples[c][r] for c in samples}, acceptance, lower_is_better, elapsed,
                primary=primary)]
            if not unsure:
                stop = ("decided" if rounds < acceptance.max_rounds
                        and elapsed < acceptance.max_seconds else "budget")
                break
        elif rounds >= acceptance.min_rounds:
            stop = "baseline"
            break
        n = acceptance.batch_rounds
        if refs:
            n = min(n, acceptance.max_rounds - rounds) or 1
        t0 = time.monotonic()
        for line in bench.command(f"rounds {n}", command_timeout):
            try:
                tag, ci, impl, us = line.split()
                assert tag == "s"
                samples[cases[int(ci)][0]][impl_names[int(impl)]].append(float(us))
            except (ValueError, IndexError, AssertionError):
                raise HarnessFailure(
                    "crash", f"benchmark protocol corrupted by output {line[:60]!r}: the "
                    "kernel must not print or write to file descriptors", line[:500],
                    phase="benchmark") from None
        rounds += n
        batches.append({"rounds": n, "seconds": round(time.monotonic() - t0, 4)})
    return Timing(samples=samples, rounds=rounds, reps=reps, calibration_us=calib,
                  seconds=time.monotonic() - start, stop_reason=stop, batches=batches,
                  batches_per_sample=per_sample)
