"""Drive the trusted benchmark driver and stop sampling when the answer is clear.

The driver (c/rl_driver.c) stays alive for the whole measurement and owns one worker
process per implementation: Python names the workers (`impl`), adds the cases, asks for
calibration and a checked call of everything, then asks for interleaved rounds in batches,
each batch ending on one of the acceptance rule's looks (`measure.rounds_to_next_look`: 3
rounds, then up to `min_rounds`, then `batch_rounds` at a time), calling
`ratchetloop.measure.needs_more_rounds()` between batches, so a gross win or loss (2x
either way) stops after 3 rounds while a close call keeps sampling up to `max_rounds` /
`max_seconds`. Everything read here comes from the driver, never from an
implementation; a malformed line is the harness's own fault.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from ..experiment import Acceptance
from ..measure import next_batch
from ..measure import progress as measure_progress
from ..status import TimingProgress
from .result import HarnessFailure, kill_now, tail


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
        if self.proc.stdout is None:
            return
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        if self.proc.stderr is None:
            return
        for line in self.proc.stderr:
            if sum(map(len, self.stderr_chunks)) < 64_000:
                self.stderr_chunks.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_chunks)

    def command(self, line: str, timeout: float, phase: str = "benchmark") -> list[str]:
        """Send one command; return its answer lines (without the final "ok")."""
        try:
            if self.proc.stdin is None:
                raise OSError("no stdin")
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

    def _died(self, line: str, phase: str) -> NoReturn:
        rc = self.proc.wait()
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else ""
            raise HarnessFailure("crash", f"benchmark process killed by signal {-rc} {name}"
                                 f" during `{line.split()[0]}`", tail(self.stderr), phase=phase)
        raise HarnessFailure("crash", f"benchmark process exited {rc} during "
                             f"`{line.split()[0]}`", tail(self.stderr), phase=phase)

    def kill(self) -> None:
        kill_now(self.proc)

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
    ipc_us: float = 0.0


def raise_failures(lines: Sequence[str], impl_names: Sequence[str], phase: str) -> None:
    """A "fail <impl> <kind> <message>" line from the driver ends the evaluation: the
    candidate's fault, or (a reference or the harness) ours."""
    for line in lines:
        if not line.startswith("fail "):
            continue
        _, impl, kind, *rest = line.split(" ", 3) + [""]
        message = rest[0].strip()
        index = int(impl) if impl.lstrip("-").isdigit() else -1
        if index == 0:
            kind_phase = "validate" if kind == "validation_error" else phase
            raise HarnessFailure(kind, message, line, phase=kind_phase)
        who = f"reference {impl_names[index]!r}" if 0 < index < len(impl_names) else "harness"
        raise HarnessFailure("harness_error", f"{who}: {kind}: {message}", line, phase=phase)


def _sample(line: str, cases: Sequence[tuple[str, Sequence[int]]],
            impl_names: Sequence[str]) -> tuple[str, str, float]:
    parts = line.split()
    try:
        if len(parts) != 4 or parts[0] != "s":
            raise ValueError(line)
        return cases[int(parts[1])][0], impl_names[int(parts[2])], float(parts[3])
    except (ValueError, IndexError):
        raise HarnessFailure("harness_error", f"benchmark driver answered {line[:60]!r}",
                             line[:500], phase="benchmark") from None


def measure(
    bench: BenchProcess,
    cases: Sequence[tuple[str, Sequence[int]]],
    impls: Sequence[tuple[str, Path]],
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
    progress: Callable[[TimingProgress], None] | None = None,
) -> Timing:
    """Start the workers, check every implementation in full, calibrate, then sample in
    sequential batches (every call of every batch checked by the driver).

    impls[0] is the candidate (name, worker binary), the rest are references.
    With references, keeps adding batches while `needs_more_rounds` says the candidate vs
    ANY reference is still unsure (on the primary case if given, else the suite total),
    bounded by max_rounds/max_seconds. Without references (seeding a baseline) it takes
    `min_rounds` rounds (rounded up to whole batches) of the candidate alone. `progress`
    hears after each batch where the sampling stands (the live view; eval.py passes
    result.report_progress); it never changes what is sampled or decided.
    """
    start = time.monotonic()
    impl_names = [name for name, _ in impls]

    def ask(line: str, phase: str = "benchmark") -> list[str]:
        answer = bench.command(line, command_timeout, phase=phase)
        raise_failures(answer, impl_names, phase)
        return answer

    ask(f"timeout {command_timeout:g}")
    for name, binary in impls:
        ask(f"impl {name} {binary}")
    ask(f"seed {int(seed) & 0xFFFFFFFFFFFFFFFF}")
    ask(f"clock {'wall' if clock == 'wall' else 'cpu'}")
    for name, params in cases:
        ask(f"case {name} " + " ".join(str(int(p)) for p in params))
    if check:  # every implementation checked in full before any batch is timed
        ask("check", phase="validate")
    reps: dict[str, int] = {}
    calib: dict[str, float] = {}
    per_sample: dict[str, int] = {}
    ipc = 0.0
    calibrate = f"calibrate {min_sample_us} {warmup} {sample_budget_us} {max_batches}"
    for line in ask(calibrate, phase="validate"):
        parts = line.split()
        if parts[:1] == ["ipc"] and len(parts) == 2:
            ipc = float(parts[1])
        elif parts[:1] == ["reps"] and len(parts) == 5:
            name = cases[int(parts[1])][0]
            reps[name], calib[name], per_sample[name] = (int(parts[2]), float(parts[3]),
                                                         int(parts[4]))
        else:
            raise HarnessFailure("harness_error", f"benchmark driver answered {line[:60]!r}",
                                 line[:500], phase="benchmark")
    samples: dict[str, dict[str, list[float]]] = {
        name: {impl: [] for impl in impl_names} for name, _ in cases}
    cand, refs = impl_names[0], list(impl_names[1:])
    rounds = 0
    batches: list[dict[str, object]] = []
    while True:
        n, stop = next_batch(samples, refs, acceptance, lower_is_better,
                             time.monotonic() - start, rounds, candidate=cand, primary=primary)
        if not n:
            break
        t0 = time.monotonic()
        for line in ask(f"rounds {n}"):
            case, impl, us = _sample(line, cases, impl_names)
            samples[case][impl].append(us)
        rounds += n
        if any(len(v) != rounds for per in samples.values() for v in per.values()):
            raise HarnessFailure("harness_error", "benchmark driver returned the wrong number "
                                 "of samples", phase="benchmark")
        batches.append({"rounds": n, "seconds": round(time.monotonic() - t0, 4)})
        if progress is not None:  # display only: the next batch is chosen as before
            progress(measure_progress(samples, refs, acceptance, lower_is_better, rounds,
                                      candidate=cand, primary=primary))
    return Timing(samples=samples, rounds=rounds, reps=reps, calibration_us=calib,
                  seconds=time.monotonic() - start, stop_reason=stop, batches=batches,
                  batches_per_sample=per_sample, ipc_us=ipc)
