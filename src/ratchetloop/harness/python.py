"""The trusted driver for Python experiments: each implementation in its own filtered process.

A Python experiment's eval.py declares a `PyExperiment` and hands it to `run()`::

    SPEC = PyExperiment(function="fib", param_order=["n"], expected=lambda n: FIB[n],
                        validate=[(n,) for n in range(26)])
    if __name__ == "__main__":
        raise SystemExit(run(SPEC))

Trust layout (DESIGN.md, "Sandbox and the trust boundary"):

* This process (eval.py + this module) is the only one that decides and the only holder of
  the result channel. `protect_evaluator()` (harness/result.py, run first by `main`) makes
  it non-dumpable (no process of the same uid can read its memory or open
  /proc/<pid>/fd/*) and marks $RATCHET_RESULT_FD non-inheritable; workers are started
  with close_fds and get only their two pipes. Nothing a worker prints is parsed; its
  stdout/stderr go to worker-<name>.log (diagnostics only).
* Each implementation -- the candidate and every reference in the request -- runs in its
  own worker process (harness/pyworker.py, `python -I`), pinned to the CPU this evaluation
  runs on, under the seccomp filter of `ratchetloop.seccomp.python_worker_policy()`
  (installed before any candidate code runs), with two pipes and nothing else: no result
  fd (`close_fds`), no threads, no processes, no signals, no file writes.
* Validation: the driver sends each validation input to the candidate's worker and compares
  what comes back itself (exactly, JSON types included, or with the experiment's checker).
* Timing is read from outside: the driver reads each worker's process CPU clock
  (clock_getcpuclockid). Accounting is continuous: a batch costs the worker's CPU time from
  the end of its previous exchange to the end of this batch's `show` reply, so CPU spent
  between batches or while answering is charged too. Every other worker must have been
  idle meanwhile (within a small tolerance), or the evaluation fails ("worked outside its
  timed batch").
* Every call of a batch keeps its result in its own slot; after each batch the driver asks
  for a few slots chosen with os.urandom (never from the request) and checks them.
* Statistics are unchanged: interleaved rounds, implementation order shuffled per round
  from request.seed, sequential stopping through `measure.needs_more_rounds` (on the primary
  case if the contract marks one, else the suite total), as in harness/run.py.
* The process is the unit of replication: every round after the first runs in new worker
  processes (`fresh_processes`; each started, filtered and loaded as above, its cases
  defined, one checked warm-up batch per case that is not a sample). A process's own speed
  -- memory layout under ASLR, allocator state, where its code objects sit -- persists over
  every round it runs and differs between two processes running the same code by a few
  percent; with one process per side for the whole evaluation, that offset was in every
  paired round alike, so no number of rounds averaged it out and the test read it as an
  effect (A/A on fib: x1.02-1.09 at p ~ 1e-5, ~9% false accepts at confidence 0.99).
  New processes every round make it round-to-round noise the test sees. The cost is two
  interpreter starts per round (~40 ms each), reported as info["fresh_process_seconds"];
  info["worker_processes"] counts the processes each implementation ran in. A sample is
  one batch: its CPU time divided by its number of calls, in microseconds. Batches are sized
  so the exchange overhead (measured per worker, reported in info) is under
  `max_overhead` of a batch. One batch per sample, not the min over several: a candidate
  could otherwise do the work of the kept batch in the discarded ones.

Not covered: a worker learns which slots are checked when it is asked (`show`), so it can
compute just those at that moment; continuous accounting charges that, but it costs a few
calls, not a batch. When every call of a case takes the same arguments (fib's cases) that
is no cheaper than caching the answer, which fib allows. An experiment that forbids
caching needs per-call inputs and results committed before the slots are revealed (e.g.
in memory the driver reads itself), which this driver does not do. CPU time misses work
done off the CPU (sleeping, waiting on I/O), which only slows a candidate down. The idle
tolerance lets a worker use a little CPU outside its exchanges (charged to its next batch
all the same). A forbidden system call is reported by category, not by name (the filter
kills at once; it does not trap).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import measure, seccomp, stability
from ..evaluate import EvalRequest, EvalResult, safe_name
from .cases import case_params, primary_case, read_contract
from .result import HarnessFailure, kill_now, main, protect_evaluator, report_progress, tail

__all__ = ["FastOnly", "PyExperiment", "evaluate", "protect_evaluator", "run"]

WORKER = Path(__file__).resolve().with_name("pyworker.py")
SECCOMP = Path(seccomp.__file__).resolve()
REPLY_LIMIT = 16 << 20
MAX_DEPTH = 64  # nesting of a result; deeper ones would strain the driver's recursion
WORKER_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")
ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
FORBIDDEN = ("candidates may not start threads or processes, send signals, set signal "
             "handlers or timers, open files for writing, use sockets or change CPU affinity")


# --------------------------------------------------------------------------- declaration


@dataclass
class FastOnly:
    """Validation inputs only for implementations fast on `probe` (the probe is checked too).

    For inputs a correct but slow seed could never finish (fib(300) by naive recursion):
    they run when one call on `probe` takes at most `max_cpu_ms` of CPU time.
    """

    probe: tuple
    max_cpu_ms: float
    inputs: list[tuple]


@dataclass
class PyExperiment:
    """What a Python experiment's eval.py declares; `evaluate` does the rest.

    function     the target function's name in the candidate file
    param_order  case params (experiment.json) passed positionally, in this order
    expected     expected(*args) -> the exact result (compared as JSON values, types too)
    checker      alternatively checker(args, got) -> None if acceptable, else a message
    validate     argument tuples the candidate must get right before it is timed
    fast_only    more validation inputs, only for implementations fast on a probe

    Arguments and results cross process boundaries as JSON: arguments must be JSON values
    (tuples arrive as lists), results are compared as decoded JSON (objects with .tolist(),
    numpy arrays say, arrive as lists), and that decoded value is what a checker gets.
    The rest tunes the measurement; the defaults suit functions from ~0.1 us to seconds.
    """

    function: str
    param_order: list[str]
    expected: Callable[..., Any] | None = None
    checker: Callable[[tuple, Any], str | None] | None = None
    validate: list[tuple] = field(default_factory=list)
    fast_only: FastOnly | None = None
    min_batch_ms: float = 2.0  # CPU time of one timed batch, at least ...
    max_batch_ms: float = 20.0  # ... and at most (unless one call takes longer)
    max_overhead: float = 0.008  # exchange overhead as a share of a batch, at most
    max_reps: int = 5_000_000
    fresh_processes: bool = True  # every round in new worker processes (module docstring)
    checked_per_batch: int = 3  # random timed calls checked after every batch
    idle_tolerance_us: float = 500.0  # CPU a worker may use between its exchanges ...
    idle_tolerance_share: float = 0.02  # ... plus this share of the wall time elapsed
    start_timeout: float = 30.0  # interpreter start + candidate import
    call_timeout: float = 10.0  # one validation call
    batch_timeout: float = 30.0  # one timed batch
    require_seccomp: bool = True
    contract: str = "experiment.json"

    def __post_init__(self) -> None:
        if (self.expected is None) == (self.checker is None):
            raise ValueError("PyExperiment needs exactly one of expected= and checker=")


# --------------------------------------------------------------------------- entry point


def run(spec: PyExperiment, argv: list[str] | None = None) -> int:
    """eval.py's entry point: `main` protects this process (`protect_evaluator`: result fd
    not inheritable, not dumpable), evaluates, and reports exactly one result."""
    return main(lambda request: evaluate(request, spec), argv)


# --------------------------------------------------------------------------- one worker


def cpu_clock(pid: int) -> int:
    """The clock id of process `pid`'s CPU time (all its threads)."""
    libc = ctypes.CDLL(None, use_errno=True)
    clock = ctypes.c_int()
    err = libc.clock_getcpuclockid(ctypes.c_int(pid), ctypes.byref(clock))
    if err:
        raise OSError(err, f"clock_getcpuclockid({pid}): {os.strerror(err)}")
    return clock.value


def seccomp_mode(pid: int) -> int | None:
    """The Seccomp: field of /proc/<pid>/status (2 = filter), None where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class NoFilter(HarnessFailure):
    """The worker could not read its source or install its seccomp filter."""


def _shallow(value: Any, depth: int) -> bool:
    if isinstance(value, list):
        return depth > 0 and all(_shallow(v, depth - 1) for v in value)
    if isinstance(value, dict):
        return depth > 0 and all(_shallow(v, depth - 1) for v in value.values())
    return True


class Worker:
    """The driver's handle on one implementation's process: pipes, deadline, CPU clock."""

    def __init__(self, name: str, source: Path, spec: PyExperiment, workdir: Path,
                 filtered: bool) -> None:
        self.name = name
        self.is_candidate = name == "candidate"
        self.spec = spec
        self.filtered = filtered
        self.log_path = workdir / f"worker-{safe_name(name)}.log"
        cmd_r, self.cmd_w = os.pipe()
        self.reply_r, reply_w = os.pipe()
        env = {k: os.environ[k] for k in WORKER_ENV_KEEP if k in os.environ}
        env.update(dict.fromkeys(ONE_THREAD, "1"))
        argv = [sys.executable, "-I", str(WORKER), str(source), spec.function,
                str(SECCOMP) if filtered else "-", str(cmd_r), str(reply_w)]
        try:
            with open(self.log_path, "ab") as log:  # "a": one log for all of its processes
                self.proc = subprocess.Popen(
                    argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, close_fds=True, pass_fds=(cmd_r, reply_w))
        finally:
            os.close(cmd_r)
            os.close(reply_w)
        self.buf = b""
        self.clock: int | None = None
        self.charged_to = 0  # CPU ns already charged to a batch (continuous accounting)
        self.idle_since = (0, 0.0)  # (CPU ns, wall s) at the end of the last exchange
        self.exchanges = 0

    # -- naming failures

    @property
    def who(self) -> str:
        return "the candidate" if self.is_candidate else "the reference"

    def fail(self, kind: str, message: str, detail: str = "", phase: str = "benchmark",
             ) -> HarnessFailure:
        """A candidate's fault as its own kind; any reference fault is a harness_error."""
        if not self.is_candidate:
            return HarnessFailure("harness_error", f"reference {self.name!r}: {message}", detail,
                                  phase)
        return HarnessFailure(kind, message, detail, phase)

    def log_tail(self) -> str:
        try:
            return tail(self.log_path.read_text(encoding="utf-8", errors="replace"), 2000)
        except OSError:
            return ""

    def _died(self, during: str, phase: str) -> HarnessFailure:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        detail = self.log_tail()
        if rc == -signal.SIGSYS:
            return self.fail("integrity", f"forbidden system call (killed by SIGSYS) while "
                             f"{during}: {FORBIDDEN}", detail, phase)
        if rc is not None and rc < 0:
            sig = -rc
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else ""
            return self.fail("crash", f"{self.who}'s process was killed by signal {sig} "
                             f"{name} while {during}", detail, phase)
        return self.fail("crash", f"{self.who}'s process exited with status {rc} while "
                         f"{during}: a candidate must not exit", detail, phase)

    def violation(self, what: str, phase: str) -> HarnessFailure:
        self.kill()
        return self.fail("integrity", f"protocol violation: {what} (only the harness may "
                         "use its pipes)", self.log_tail(), phase)

    # -- talking

    def send(self, message: list, during: str, phase: str) -> None:
        data = (json.dumps(message) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.cmd_w, data):]
        except OSError:
            raise self._died(during, phase) from None

    def receive(self, timeout: float, during: str, phase: str) -> list:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            ready = select.select([self.reply_r], [], [], max(remaining, 0))[0] \
                if remaining > 0 else []
            if not ready:
                self.kill()
                raise self.fail("timeout", f"{self.who} took longer than {timeout:g}s while "
                                f"{during}", self.log_tail(), phase)
            chunk = os.read(self.reply_r, 1 << 16)
            if not chunk:
                raise self._died(during, phase)
            self.buf += chunk
            if len(self.buf) > REPLY_LIMIT:
                raise self.violation(f"a reply longer than {REPLY_LIMIT} bytes", phase)
        line, _, self.buf = self.buf.partition(b"\n")
        if self.buf:
            raise self.violation("more than one reply to one command", phase)
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, an int over 4300 digits, nesting
            raise self.violation(f"unreadable reply {line[:60]!r}", phase) from None
        if not isinstance(reply, list) or not reply or not isinstance(reply[0], str):
            raise self.violation(f"malformed reply {line[:80]!r}", phase)
        return reply

    def request(self, message: list, timeout: float, during: str, phase: str,
                expect: str) -> list:
        """One exchange; returns the reply, which starts with `expect` (or is "raised")."""
        self.idle_check(f"before {during}", phase)
        self.send(message, during, phase)
        reply = self.receive(timeout, during, phase)
        self.exchanges += 1
        self.idle_since = (self.cpu_ns(), time.monotonic())
        if reply[0] not in (expect, "raised"):
            raise self.violation(f"reply {reply[0]!r} to {message[0]!r}", phase)
        return reply

    # -- the CPU clock

    def start(self) -> None:
        """Wait for "ready"; a failed import is the candidate's build error."""
        reply = self.receive(self.spec.start_timeout, "loading", "build")
        if reply[0] == "error" and len(reply) >= 4:
            stage, text, trace = str(reply[1]), str(reply[2]), str(reply[3])
            if stage == "import":
                raise self.fail("build_error", text, trace, phase="build")
            raise NoFilter("harness_error", f"worker {self.name!r} could not start: "
                           f"{text}", trace, phase="build")
        if reply != ["ready"]:
            raise self.violation(f"expected ready, got {reply[0]!r}", "build")
        if self.filtered and seccomp_mode(self.proc.pid) not in (2, None):
            self.kill()
            raise HarnessFailure("harness_error", f"worker {self.name!r} reported ready "
                                 "without its seccomp filter", phase="build")
        try:
            self.clock = cpu_clock(self.proc.pid)
        except OSError as exc:
            raise HarnessFailure("harness_error", f"cannot read the CPU clock of worker "
                                 f"{self.name!r}: {exc}", phase="build") from None
        self.idle_since = (self.cpu_ns(), time.monotonic())
        self.charged_to = self.idle_since[0]

    def cpu_ns(self) -> int:
        assert self.clock is not None
        try:
            return time.clock_gettime_ns(self.clock)
        except OSError:
            raise self._died("being timed", "benchmark") from None

    def charge(self) -> int:
        """CPU ns not charged yet, up to the end of the last exchange; all of it, always."""
        end = self.idle_since[0]
        used, self.charged_to = end - self.charged_to, end
        return used

    def idle_check(self, when: str, phase: str) -> None:
        """Between its exchanges a worker is blocked on its pipe: it must not compute."""
        if self.clock is None:
            return
        used = self.cpu_ns() - self.idle_since[0]
        wall = time.monotonic() - self.idle_since[1]
        allowed = self.spec.idle_tolerance_us * 1e3 + self.spec.idle_tolerance_share * wall * 1e9
        if used > allowed:
            self.kill()
            raise self.fail(
                "integrity", f"worked outside its timed batch: {used / 1e6:.2f} ms of CPU "
                f"while it should have been idle ({wall * 1e3:.1f} ms, {when}); the "
                "process must do nothing between calls", self.log_tail(), phase)

    # -- the end

    def kill(self) -> None:
        kill_now(self.proc)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.write(self.cmd_w, b'["quit"]\n')
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for fd in (self.cmd_w, self.reply_r):
            try:
                os.close(fd)
            except OSError:
                pass


# --------------------------------------------------------------------------- checking


def same(got: Any, want: Any) -> bool:
    """Exact equality of JSON values, types included (1 != 1.0 != True here)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, list):
        return len(got) == len(want) and all(same(a, b) for a, b in zip(got, want, strict=True))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, float) and math.isnan(want):
        return math.isnan(got)
    return bool(got == want)


def short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Checker:
    """Expected results, computed once per argument tuple, compared in this process."""

    def __init__(self, spec: PyExperiment) -> None:
        self.spec = spec
        self.cache: dict[str, Any] = {}

    def call_text(self, args: Sequence[Any]) -> str:
        return f"{self.spec.function}({', '.join(short(a, 40) for a in args)})"

    def problem(self, args: tuple, got: Any) -> str | None:
        """None when `got` is right for `args`, else what is wrong (no kind prefix)."""
        if self.spec.checker is not None:
            try:
                return self.spec.checker(args, got)
            except Exception as exc:  # noqa: BLE001 - a value the checker cannot take
                return f"{self.call_text(args)} returned {short(got)}, which the checker " \
                       f"cannot judge ({type(exc).__name__}: {exc})"
        key = json.dumps(args)
        if key not in self.cache:
            assert self.spec.expected is not None
            self.cache[key] = json.loads(json.dumps(self.spec.expected(*args)))
        want = self.cache[key]
        if same(got, want):
            return None
        return f"{self.call_text(args)} returned {short(got)}, expected {short(want)}"


# --------------------------------------------------------------------------- the session


class Session:
    """Workers, cases and the checker for one evaluation."""

    def __init__(self, spec: PyExperiment, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.check = Checker(spec)
        self.workers: dict[str, Worker] = {}
        self.sources: dict[str, Path] = {}
        self.pids: dict[str, list[int]] = {}  # every process each implementation ran in
        self.rng = random.Random(os.urandom(32))  # which slots to check: never predictable
        self.filtered = True
        self.checked = 0
        self._case_n = 0

    def launch(self, name: str, source: Path) -> Worker:
        """Start a worker and wait until its implementation is loaded (filtered if possible)."""
        worker = self.workers[name] = Worker(name, source, self.spec, self.workdir,
                                             self.filtered)
        self.sources[name] = source
        self.pids.setdefault(name, []).append(worker.proc.pid)
        try:
            worker.start()
        except NoFilter as exc:
            worker.close()
            if self.spec.require_seccomp or not self.filtered:
                raise HarnessFailure("harness_error", f"{exc.message} (seccomp is required: "
                                     "PyExperiment.require_seccomp)", exc.detail, "build"
                                     ) from None
            self.filtered = False  # this kernel refuses filters: run unfiltered, say so
            return self.launch(name, source)
        return worker

    def relaunch(self, name: str, cases: dict[str, tuple], reps: dict[str, dict[str, int]]
                 ) -> Worker:
        """Replace `name`'s worker by a new process, its cases defined and warmed up.

        The warm-up batch (one per case, checked like any batch, not a sample) takes the
        first-touch costs a new process pays on its first calls (~10% for fib)."""
        self.workers[name].close()
        worker = self.launch(name, self.sources[name])
        for case, args in cases.items():
            self.define(worker, case, args, "benchmark")
        for case, args in cases.items():
            self.batch(worker, case, args, reps[case][name], "benchmark",
                       self.spec.batch_timeout)
        return worker

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()

    def define(self, worker: Worker, case: str, args: tuple, phase: str) -> None:
        reply = worker.request(["case", case, list(args)], self.spec.call_timeout,
                               f"setting up case {case}", phase, "ok")
        if reply[0] != "ok":
            raise worker.violation("case refused", phase)

    def batch(self, worker: Worker, case: str, args: tuple, reps: int, phase: str,
              timeout: float) -> int:
        """Run `reps` calls, check random slots, return the CPU ns charged (continuous)."""
        during = f"running {self.check.call_text(args)} x{reps}"
        reply = worker.request(["run", case, reps], timeout, during, phase, "done")
        if reply[0] == "raised":
            text = str(reply[1]) if len(reply) > 1 else "exception"
            trace = str(reply[2]) if len(reply) > 2 else ""
            where = "" if phase == "validate" else " (timed call)"
            raise worker.fail("validation_error", f"crash: {text}{where}", trace, phase)
        picks = sorted(self.rng.sample(range(reps), min(self.spec.checked_per_batch, reps)))
        reply = worker.request(["show", picks], self.spec.call_timeout,
                               f"showing results of {self.check.call_text(args)}", phase,
                               "shown")
        used = worker.charge()
        self.idle_others(worker, phase)
        if reply[0] == "raised":  # e.g. a result that is not a JSON value
            text = str(reply[1]) if len(reply) > 1 else "exception"
            raise worker.fail("validation_error", f"unusable result: {text}",
                              worker.log_tail(), phase)
        if len(reply) != 2 or not isinstance(reply[1], list) or len(reply[1]) != len(picks):
            raise worker.violation(f"{len(picks)} results asked for, not that reply", phase)
        for slot, got in zip(picks, reply[1], strict=True):
            self.checked += 1
            if not _shallow(got, MAX_DEPTH):
                raise worker.fail("validation_error", f"unusable result: a value nested "
                                  f"deeper than {MAX_DEPTH}", phase=phase)
            problem = self.check.problem(args, got)
            if problem is None:
                continue
            if phase == "validate":
                raise worker.fail("validation_error", f"wrong_result: {problem}", phase=phase)
            raise worker.fail("integrity", f"wrong_result on a timed call: {problem} "
                              f"(call {slot + 1} of {reps}; timed calls are checked at random)",
                              phase=phase)
        return used

    def call(self, worker: Worker, args: tuple, phase: str) -> int:
        """One checked call (validation); returns its CPU ns."""
        self._case_n += 1
        name = f"v{self._case_n}"
        self.define(worker, name, args, phase)
        worker.charge()  # the probe's time starts here, not at the previous exchange
        return self.batch(worker, name, args, 1, phase, self.spec.call_timeout)

    def idle_others(self, busy: Worker, phase: str) -> None:
        for other in self.workers.values():
            if other is not busy:
                other.idle_check(f"while {busy.name!r} was timed", phase)


def validate(session: Session, worker: Worker) -> dict[str, object]:
    spec = session.spec
    for args in spec.validate:
        session.call(worker, tuple(args), "validate")
    info: dict[str, object] = {"validated": len(spec.validate)}
    fast = spec.fast_only
    if fast is not None:
        used = session.call(worker, tuple(fast.probe), "validate")
        info["probe_cpu_ms"] = round(used / 1e6, 3)
        if used <= fast.max_cpu_ms * 1e6:
            for args in fast.inputs:
                session.call(worker, tuple(args), "validate")
            info["validated"] = len(spec.validate) + len(fast.inputs) + 1
        else:
            info["skipped_slow"] = len(fast.inputs)
    return info


# --------------------------------------------------------------------------- contract


# --------------------------------------------------------------------------- evaluate


def evaluate(request: EvalRequest, spec: PyExperiment, workdir: Path | None = None
             ) -> EvalResult:
    """Validate the candidate, then time it against every reference, each in its own worker."""
    work = Path(workdir or Path.cwd()).resolve()
    contract = read_contract(work, spec.contract)
    unit = str(contract.get("unit", "us"))
    info: dict[str, object] = {}
    session = Session(spec, work)
    try:
        info["pinned_cpu"] = stability.pin_current_process()
        candidate = session.launch("candidate", work / request.candidate)
        info["seccomp"] = session.filtered
        if request.validate_candidate:
            info.update(validate(session, candidate))
        if not request.benchmark:
            return EvalResult(ok=True, phase="done", unit=unit, info=info)
        for name, path in request.references.items():
            session.launch(name, work / path)
        args = {name: tuple(params) for name, params in
                case_params(contract, request.cases, spec.param_order)}
        timing = measure_all(session, request, args,
                             primary_case(contract, request.cases))
    except HarnessFailure as exc:
        return EvalResult(ok=False, phase=exc.phase, failure=exc.to_failure(), unit=unit,
                          info=info)
    finally:
        session.close()
    info.update(timing.info)
    return EvalResult(ok=True, phase="done", unit=unit, samples=timing.samples,
                      rounds=timing.rounds, info=info)


@dataclass
class Timing:
    samples: dict[str, dict[str, list[float]]]
    rounds: int
    info: dict[str, object]


def measure_all(session: Session, request: EvalRequest, cases: dict[str, tuple],
                primary: str | None) -> Timing:
    spec = session.spec
    start = time.monotonic()
    workers = list(session.workers.values())
    for worker in workers:
        for case, args in cases.items():
            session.define(worker, case, args, "benchmark")
    overhead = {w.name: exchange_overhead(session, w, next(iter(cases))) for w in workers}
    reps: dict[str, dict[str, int]] = {case: {} for case in cases}
    for case, args in cases.items():
        for worker in workers:
            reps[case][worker.name] = calibrate(session, worker, case, args,
                                                overhead[worker.name])
    samples: dict[str, dict[str, list[float]]] = {c: {w.name: [] for w in workers}
                                                  for c in cases}
    order_rng = random.Random(request.seed)
    launch_rng = random.Random(request.seed + 1)
    acceptance = request.acceptance
    names = [w.name for w in workers]
    cand, refs = "candidate", [n for n in names if n != "candidate"]
    rounds = 0
    fresh_seconds = 0.0
    while True:
        n, stop = measure.next_batch(samples, refs, acceptance, request.lower_is_better,
                                     time.monotonic() - start, rounds, candidate=cand,
                                     primary=primary)
        if not n:
            break
        for i in range(n):
            if spec.fresh_processes and rounds + i > 0:  # round 1: the calibrated workers
                t0 = time.monotonic()
                for name in launch_rng.sample(names, len(names)):
                    session.relaunch(name, cases, reps)
                fresh_seconds += time.monotonic() - t0
            for case, args in cases.items():
                order = [session.workers[name] for name in names]
                order_rng.shuffle(order)
                for worker in order:
                    r = reps[case][worker.name]
                    used = session.batch(worker, case, args, r, "benchmark",
                                         spec.batch_timeout)
                    samples[case][worker.name].append(used / r / 1e3)
        rounds += n
        report_progress(measure.progress(samples, refs, acceptance, request.lower_is_better,
                                         rounds, candidate=cand, primary=primary))
    share = {w.name: round(max(overhead[w.name] / (min(samples[c][w.name]) * 1e3
                                                   * reps[c][w.name]) for c in cases), 5)
             for w in workers}
    info: dict[str, object] = {
        "reps": reps,
        "ipc_overhead_us": {k: round(v / 1e3, 1) for k, v in overhead.items()},
        "ipc_overhead_share": share,
        "checked_calls": session.checked,
        "timing_seconds": round(time.monotonic() - start, 3),
        "worker_processes": {name: len(pids) for name, pids in session.pids.items()},
        "fresh_process_seconds": round(fresh_seconds, 3),
        "stop_reason": stop,
        "sample": "CPU time of one batch of reps calls / reps, in us; the worker's process "
                  "CPU clock read by the driver, continuous between exchanges",
    }
    return Timing(samples=samples, rounds=rounds, info=info)


def exchange_overhead(session: Session, worker: Worker, case: str, tries: int = 7) -> int:
    """CPU ns one empty batch costs the worker (run 0 calls + show nothing): the median."""
    costs = []
    for _ in range(tries):
        worker.request(["run", case, 0], session.spec.call_timeout, "an empty batch",
                       "benchmark", "done")
        worker.request(["show", []], session.spec.call_timeout, "an empty batch",
                       "benchmark", "shown")
        costs.append(worker.charge())
    costs.sort()
    return costs[len(costs) // 2]


def calibrate(session: Session, worker: Worker, case: str, args: tuple, overhead: int) -> int:
    """Calls per batch so a batch lasts >= min_batch_ms and the overhead is <= max_overhead."""
    spec = session.spec
    target = min(max(spec.min_batch_ms * 1e6, overhead / spec.max_overhead),
                 spec.max_batch_ms * 1e6)
    reps = 1
    while True:
        used = session.batch(worker, case, args, reps, "benchmark", spec.batch_timeout)
        if used >= target or reps >= spec.max_reps:
            return reps
        grow = min(max(target * 1.25 / max(used, 1), 2.0), 100.0)
        reps = min(spec.max_reps, math.ceil(reps * grow))
