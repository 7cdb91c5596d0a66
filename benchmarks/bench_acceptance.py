"""How often does the acceptance rule accept, and how many rounds does it take to decide?

Effects are true speed-ups: the candidate takes 1 / (1 + effect) of the incumbent's time,
so +100% is 2x faster, -50% is 2x slower, 0 is the same code (A/A: every accept is a false
accept) and `inf` is a candidate whose metric is zero.

Synthetic mode (default): benchmarks/synthetic/spin.c is one calibrated busy loop timed by
the wall clock (so a busy host's noise is in it); the candidate runs it for 1 / (1 + effect)
times the incumbent's iterations. Each trial is a fresh process timed the way the harness
times (warm-up, then per round both implementations once in a random A-B / B-A order, one
paired sample per round), max_rounds rounds of it; then two rules replay the harness's
sequential pattern on the SAME samples:
  * after: production's rule -- batches of `measure.rounds_to_next_look` (3 rounds, then
    the regular looks), `measure.needs_more_rounds` until it says stop, `measure.decide`;
  * before: the rule as it was at commit b7fe41e (no early look, no zero-variance or
    non-positive handling), read with `git show` into a temporary module, replayed with
    that version's harness batches (`batch_rounds` at a time).
--simulate NOISE replaces the spin program with lognormal per-side noise of that sd (fast,
so many trials); the rules and the table are the same.

Harness mode (--harness): the same kernel of known speed, timed through the real
evaluation path instead: a trusted driver and one seccomp-filtered worker process per
implementation, per-call input and output slots, each batch timed by the worker's CPU
clock read from outside (ratchetloop.harness.timing.measure, which applies
`needs_more_rounds` and `rounds_to_next_look` itself), a fresh driver and workers per
trial; then `measure.decide`. Only "after": the harness stops when the rule does, so
there is no full series to replay the old rule on.

Experiment mode (--experiment linear): A/A on a real kernel -- the incumbent source is
evaluated against a byte-for-byte copy of itself through ratchetloop.evaluate.run_eval, many
times, and the accept rate, ratio CI and per-round noise are reported, with "between /
within": how far the evaluations' mean log-ratios spread, in units of the standard error
each evaluation claims (about 1 when its rounds are independent; more when something
fixed for a whole evaluation -- a worker process's memory layout, say -- shifts its
rounds alike, which no number of rounds averages out). --before-after (Python experiments)
interleaves the shipped harness (a fresh worker process per implementation every round)
with the same experiment run with `fresh_processes` off (one process per implementation
for the whole evaluation, as before): false accepts and wall time side by side.

Accept rates on effects <= 0 come with a one-sided 95% Clopper-Pearson upper bound, on
gains with a lower bound, so "A/A false accepts <= 1%" and "power at +5% >= 95%" are read
off the table with their sampling error.

    .venv/bin/python benchmarks/bench_acceptance.py --quick
    .venv/bin/python benchmarks/bench_acceptance.py                 # full synthetic table
    .venv/bin/python benchmarks/bench_acceptance.py --simulate 0.03 --aa-trials 5000
    .venv/bin/python benchmarks/bench_acceptance.py --harness --aa-trials 100 --trials 40
    .venv/bin/python benchmarks/bench_acceptance.py --experiment linear --aa-trials 50
    .venv/bin/python benchmarks/bench_acceptance.py --experiment fib --aa-trials 80 --before-after
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ratchetloop import benchlock, measure, stability
from ratchetloop.experiment import Acceptance
from ratchetloop.measure import decide, needs_more_rounds, rounds_to_next_look

HERE = Path(__file__).resolve().parent
SPIN_C = HERE / "synthetic" / "spin.c"
SPIN_KERNEL = HERE / "synthetic" / "spin_kernel.c"
SPIN_DRIVER = HERE / "synthetic" / "spin_driver.c"
EFFECTS = [0.0, 0.01, 0.05, 0.10, 1.0, -0.5, math.inf]
BEFORE = "b7fe41e"  # the last commit with the rule that had no early look


# ---------------------------------------------------------------- synthetic program


def build_spin(work: Path) -> Path:
    binary = work / "spin"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SPIN_C)], check=True)
    return binary


def run_spin(binary: Path, ref: int, cand: int, rounds: int, seed: int,
             warmup: int = 2) -> tuple[list[float], list[float]]:
    out = subprocess.run([str(binary), str(ref), str(cand), str(rounds), str(warmup),
                          str(seed)], check=True, capture_output=True, text=True).stdout
    pairs = [line.split() for line in out.splitlines()]
    return [float(c) / 1e3 for c, _ in pairs], [float(r) / 1e3 for _, r in pairs]


def calibrate(binary: Path, sample_us: float) -> int:
    """Iterations for one call of ~sample_us (median over a few quiet-ish calls)."""
    probe = 200_000
    cand, ref = run_spin(binary, probe, probe, 21, seed=1)
    per_iter = statistics.median(cand + ref) / probe
    return max(1000, int(sample_us / per_iter))


def label(effect: float) -> str:
    return "zero" if math.isinf(effect) else f"{effect:+.0%}"


# ---------------------------------------------------------------- rules


def load_before() -> types.ModuleType | None:
    """measure.py as of BEFORE, as a module (read-only git use); None without git."""
    try:
        source = subprocess.run(
            ["git", "-C", str(HERE), "show", f"{BEFORE}:src/ratchetloop/measure.py"],
            check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = "ratchetloop_measure_before"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up while decorating
    exec(compile(source.replace("from .experiment import", "from ratchetloop.experiment import"),
                 f"{BEFORE}:measure.py", "exec"), module.__dict__)
    return module


@dataclass
class Rule:
    """One acceptance rule with the harness batching that went with it."""

    name: str
    needs_more: Callable[..., bool]
    decide: Callable[..., Any]
    batch: Callable[[int, Acceptance], int]


AFTER = Rule("after", needs_more_rounds, decide, rounds_to_next_look)


def before_rule(module: types.ModuleType) -> Rule:
    def batch(rounds: int, acc: Acceptance) -> int:
        return min(acc.batch_rounds, acc.max_rounds - rounds) or 1  # the old harness loop

    return Rule("before", module.needs_more_rounds, module.decide, batch)


def sequential(rule: Rule, cand: list[float], ref: list[float],
               acc: Acceptance) -> tuple[int, float, measure.Comparison]:
    """Replay a harness: batches until the rule stops, then its decide; (rounds, s, verdict)."""
    rounds = 0
    while True:
        elapsed = sum(cand[:rounds]) / 1e6 + sum(ref[:rounds]) / 1e6
        if rounds and not rule.needs_more({"c": cand[:rounds]}, {"c": ref[:rounds]}, acc,
                                          True, elapsed):
            break
        rounds += rule.batch(rounds, acc)
    dec = rule.decide({"c": {"candidate": cand[:rounds], "best": ref[:rounds]}}, "best", acc)
    return rounds, elapsed, dec.overall


@dataclass
class Tally:
    verdicts: dict[str, int] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)

    def add(self, rounds: int, seconds: float, o: measure.Comparison) -> None:
        self.verdicts[o.verdict] = self.verdicts.get(o.verdict, 0) + 1
        self.rounds.append(rounds)
        self.seconds.append(seconds)
        self.ratios.append(o.ratio)
        self.noise.append(o.noise)

    @property
    def trials(self) -> int:
        return len(self.rounds)

    @property
    def accepts(self) -> int:
        return self.verdicts.get("better", 0)


@dataclass
class Row:
    effect: float
    after: Tally = field(default_factory=Tally)
    before: Tally | None = None


def upper95(k: int, n: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound on a rate seen k times in n."""
    return 1.0 if k >= n else float(stats.beta.ppf(0.95, k + 1, n - k))


def lower95(k: int, n: int) -> float:
    """One-sided 95% Clopper-Pearson lower bound on a rate seen k times in n."""
    return 0.0 if k <= 0 else float(stats.beta.ppf(0.05, k, n - k + 1))


def samples_source(args: argparse.Namespace, acc: Acceptance,
                   work: Path) -> Callable[[float, int], tuple[list[float], list[float]]]:
    """(effect, seed) -> max_rounds paired samples: the spin program or simulated noise."""
    if args.simulate is not None:
        noise, df = args.simulate, args.tails
        shape = f"Student t{df:g} (sd-scaled)" if df else "normal"
        print(f"simulated: ~{args.sample_us:g} us per call, log-noise sd {noise:g} per side, "
              f"{shape}; {acceptance_text(acc)}\n", flush=True)

        def simulated(effect: float, seed: int) -> tuple[list[float], list[float]]:
            rng = np.random.default_rng(seed)

            def log_noise() -> np.ndarray:
                if not df:
                    return rng.normal(0, noise, acc.max_rounds)
                return noise * rng.standard_t(df, acc.max_rounds) / math.sqrt(df / (df - 2))

            ref = args.sample_us * np.exp(log_noise())
            cand = args.sample_us / (1 + effect) * np.exp(log_noise())
            return (cand * (0.0 if math.isinf(effect) else 1.0)).tolist(), ref.tolist()

        return simulated
    binary = build_spin(work)
    iters = calibrate(binary, args.sample_us)
    print(f"spin: {iters} iterations ~ {args.sample_us:g} us per call; "
          f"{acceptance_text(acc)}\n", flush=True)

    def spun(effect: float, seed: int) -> tuple[list[float], list[float]]:
        cand_iters = max(1, round(iters / (1 + effect))) if math.isfinite(effect) else iters
        with benchlock.bench_lock("bench_acceptance"):  # per trial: others interleave
            cand, ref = run_spin(binary, iters, cand_iters, acc.max_rounds, seed)
        return ([0.0] * len(cand) if math.isinf(effect) else cand), ref

    return spun


def acceptance_text(acc: Acceptance) -> str:
    return (f"acceptance min_effect={acc.min_effect} confidence={acc.confidence} rounds "
            f"{acc.min_rounds}..{acc.max_rounds} by {acc.batch_rounds}; early look at "
            f"{measure.EARLY_ROUNDS} rounds (share {measure.EARLY_SHARE:g} of alpha, "
            f">= {1 / (1 - measure.EARLY_MIN_EFFECT):.2g}x to accept)")


def synthetic(args: argparse.Namespace, acc: Acceptance) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="bench-acceptance-"))
    try:
        source = samples_source(args, acc, work)
        old = load_before()
        if old is None:
            print(f"(no git history: the 'before' rule of {BEFORE} is not shown)")
        rows = []
        for e_index, effect in enumerate(args.effects):
            row = Row(effect, before=Tally() if old is not None else None)
            for t in range(args.aa_trials if effect == 0 else args.trials):
                seed = args.seed * 1_000_003 + t * 7919 + e_index * 104_729
                cand, ref = source(effect, seed)
                row.after.add(*sequential(AFTER, cand, ref, acc))
                if old is not None and row.before is not None:
                    row.before.add(*sequential(before_rule(old), cand, ref, acc))
            rows.append(row)
            print_row(row, header=len(rows) == 1)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rates(t: Tally, effect: float) -> str:
    """accept% (bound) | reject% (worse/same) | mean rounds for one rule."""
    k, n = t.accepts, t.trials
    if effect <= 0:
        bound = f" (<={100 * upper95(k, n):.2f}%)"
    elif effect >= 0.05:
        bound = f" (>={100 * lower95(k, n):.1f}%)"
    else:
        bound = ""
    worse, same = t.verdicts.get("worse", 0), n - k - t.verdicts.get("worse", 0)
    return (f"{100 * k / n:5.1f}%{bound} | {100 * (n - k) / n:5.1f}% ({worse}/{same}) | "
            f"{statistics.mean(t.rounds):.1f}")


def print_row(row: Row, header: bool) -> None:
    if header:
        print("| true speed-up | trials | before: accept | before: reject (worse/same) | "
              "before: mean rounds | after: accept | after: reject (worse/same) | "
              "after: mean rounds | after: decided at 3 | s/decision after | "
              "median ratio | noise/round |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    a = row.after
    before = rates(row.before, row.effect) if row.before else "- | - | -"
    at3 = sum(r == measure.EARLY_ROUNDS for r in a.rounds) / a.trials
    ratios = [r for r in a.ratios if math.isfinite(r)]
    print(f"| {label(row.effect)} | {a.trials} | {before} | {rates(a, row.effect)} | "
          f"{100 * at3:.0f}% | {statistics.mean(a.seconds):.3f} | "
          f"{statistics.median(ratios) if ratios else math.nan:.4f} | "
          f"{100 * statistics.median(a.noise):.2f}% |", flush=True)


# ---------------------------------------------------------------- through the harness


def harness(args: argparse.Namespace, acc: Acceptance) -> list[Row]:
    """The spin kernel through the real driver/worker path: one build per effect, a fresh
    driver and workers per trial, sequential stopping inside `measure`."""
    from ratchetloop.harness import cbuild
    from ratchetloop.harness.result import HarnessFailure
    from ratchetloop.harness.timing import BenchProcess
    from ratchetloop.harness.timing import measure as time_impls

    target = cbuild.CTarget("spin", "void {name}(float *out, const float *in, long iters)")
    work = Path(tempfile.mkdtemp(prefix="bench-acceptance-harness-"))
    try:
        iters = calibrate(build_spin(work), args.sample_us)
        kernel = SPIN_KERNEL.read_text(encoding="utf-8")

        def source(name: str, effect: float) -> cbuild.Impl:
            path = work / f"{name}.c"
            work_per_mille = round(1000 / (1 + effect))
            path.write_text(f"#define WORK {work_per_mille}\n{kernel}")
            return cbuild.Impl(name, path)

        print(f"spin through the harness: {iters} iterations ~ {args.sample_us:g} us per "
              f"call; {acceptance_text(acc)}\n", flush=True)
        rows = []
        for e_index, effect in enumerate(args.effects):
            if math.isinf(effect):  # calibration would size every batch for the no-op
                print("(zero: not in harness mode; a kernel doing no work makes the driver's"
                      " calibration size the reference's batches for it)", flush=True)
                continue
            tag = f"e{e_index}"
            build = cbuild.build(target, [source(f"cand_{tag}", effect), source("best", 0.0)],
                                 [SPIN_DRIVER], work / tag, check=False)
            workers = [("candidate", build.workers[0].binary), ("best", build.workers[1].binary)]
            row = Row(effect)
            for t in range(args.aa_trials if effect == 0 else args.trials):
                seed = args.seed * 1_000_003 + t * 7919 + e_index * 104_729
                with benchlock.bench_lock("bench_acceptance"):
                    bench = BenchProcess(build.driver, cwd=work)
                    try:
                        timing = time_impls(bench, [("spin", [iters])], workers, acc,
                                            seed=seed, min_sample_us=args.sample_us / 2)
                    except HarnessFailure as exc:  # e.g. a busy host trips the idle check
                        print(f"  {label(effect)} trial {t} skipped: {exc.kind}: {exc.message}",
                              flush=True)
                        continue
                    finally:
                        bench.close()
                o = decide(timing.samples, "best", acc).overall
                row.after.add(timing.rounds, timing.seconds, o)
            rows.append(row)
            print_row(row, header=len(rows) == 1)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- real experiment A/A


@dataclass
class AATally:
    """One variant's A/A evaluations: verdicts, and the paired log-ratios' mean and SE."""

    name: str
    verdicts: dict[str, int] = field(default_factory=dict)
    case_accepts: int = 0
    rounds: list[int] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)  # mean log(candidate / reference)
    ses: list[float] = field(default_factory=list)  # its standard error within the eval

    def add(self, res: Any, dec: measure.Decision) -> None:
        o = dec.overall
        self.verdicts[o.verdict] = self.verdicts.get(o.verdict, 0) + 1
        self.case_accepts += bool(dec.better_cases)
        self.rounds.append(o.rounds)
        self.walls.append(res.wall_seconds)
        self.noise.append(o.noise)
        self.ratios.append(o.ratio)
        cand = measure.suite_totals({c: v["candidate"] for c, v in res.samples.items()})
        ref = measure.suite_totals({c: v["best"] for c, v in res.samples.items()})
        d = np.log(np.array(cand) / np.array(ref))
        self.means.append(float(d.mean()))
        self.ses.append(float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan)

    def row(self) -> str:
        n, k = len(self.rounds), self.verdicts.get("better", 0)
        within = math.sqrt(statistics.mean(s * s for s in self.ses if s == s))
        between = statistics.stdev(self.means) if n > 1 else math.nan
        extreme = sum(abs(m / s) > 2.576 for m, s in zip(self.means, self.ses, strict=True)
                      if s > 0)
        return (f"| {self.name} | {n} | {k} = {100 * k / n:.1f}% (<= {100 * upper95(k, n):.1f}%)"
                f" | {100 * self.case_accepts / n:.1f}% | {self.verdicts} | "
                f"{statistics.mean(self.rounds):.1f} | {statistics.mean(self.walls):.2f} | "
                f"{statistics.median(self.ratios):.4f} [{min(self.ratios):.4f}, "
                f"{max(self.ratios):.4f}] | {100 * statistics.median(self.noise):.2f}% | "
                f"{between:.4f} / {within:.4f} = {between / within:.1f} | "
                f"{100 * extreme / n:.0f}% |")


def one_process_copy(exp: Any, work: Path) -> Any:
    """The experiment with its Python harness's fresh_processes off: the harness as it
    was before (one worker process per implementation for the whole evaluation)."""
    from ratchetloop.evaluate import STATE_NAMES
    from ratchetloop.experiment import load

    copy = work / exp.name
    shutil.copytree(exp.root, copy, ignore=shutil.ignore_patterns(*STATE_NAMES, ".*"))
    eval_py = copy / "eval.py"
    text = eval_py.read_text(encoding="utf-8")
    guard = 'if __name__ == "__main__":'
    if "PyExperiment" not in text or guard not in text:
        raise SystemExit(f"--before-after needs a Python experiment (harness/python.py); "
                         f"{exp.name}'s eval.py is not one")
    eval_py.write_text(text.replace(guard, f"SPEC.fresh_processes = False\n\n{guard}", 1),
                       encoding="utf-8")
    return load(copy)


def experiment_aa(args: argparse.Namespace) -> None:
    """A/A through run_eval; with --before-after, the one-process harness interleaved."""
    from ratchetloop import evaluate
    from ratchetloop.experiment import load

    exp = load(args.experiment)
    source = exp.naive_path.read_text(encoding="utf-8")
    acc = exp.acceptance
    print(f"A/A on experiment {exp.name}: candidate == incumbent ({exp.naive}), "
          f"{args.aa_trials} trials, acceptance {acc.model_dump()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        variants = [(AATally("after" if args.before_after else exp.name), exp)]
        if args.before_after:
            variants.append((AATally("before (one process)"), one_process_copy(exp, Path(tmp))))
        for t in range(args.aa_trials):
            order = variants if t % 2 == 0 else variants[::-1]  # alternate who goes first
            for tally, variant in order:
                res = evaluate.run_eval(variant, source, {"best": source}, validate=False,
                                        seed=t)
                if not res.ok:
                    print(f"trial {t} {tally.name}: eval failed: {res.failure}",
                          file=sys.stderr)
                    continue
                dec = decide(res.samples, "best", acc, exp.lower_is_better)
                tally.add(res, dec)
                procs = res.info.get("worker_processes", "")
                print(f"  trial {t} {tally.name}: {dec.overall.summary()} wall "
                      f"{res.wall_seconds:.2f}s processes {procs}", flush=True)
    print("\n`between / within`: the standard deviation of an evaluation's mean log-ratio "
          "across evaluations, over the standard error each evaluation computes from its "
          "own rounds; about 1 when the rounds are independent, so the test's confidence "
          "holds. `|z| > 2.58`: evaluations whose mean is 2.58 of its own SEs from 0 "
          "(about 1% if the rounds are independent).")
    print("\n| variant | trials | accept (overall) | any case accepted | verdicts | "
          "mean rounds | s/eval | ratio median [min, max] | noise/round | "
          "between / within | \\|z\\| > 2.58 |")
    print("|---|---:|---:|---:|---|---:|---:|---|---:|---|---:|")
    for tally, _ in variants:
        if tally.rounds:
            print(tally.row())


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few trials: a smoke run in ~1 min")
    p.add_argument("--trials", type=int, default=None, help="trials per nonzero effect")
    p.add_argument("--aa-trials", type=int, default=None, help="trials at effect 0 / A/A")
    p.add_argument("--effects", type=float, nargs="+", default=EFFECTS,
                   help="true speed-ups (0.05 = 5%% faster, -0.5 = 2x slower, inf = metric 0)")
    p.add_argument("--simulate", type=float, metavar="NOISE",
                   help="lognormal noise of this sd per side instead of the spin program")
    p.add_argument("--tails", type=float, metavar="DF",
                   help="with --simulate: Student-t log-noise with DF (> 2) degrees of freedom")
    p.add_argument("--sample-us", type=float, default=1000.0,
                   help="length of one timed call (the harness's min_sample_us)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pin", action="store_true", help="pin to one CPU like the harness")
    p.add_argument("--experiment", help="A/A on a real experiment (e.g. linear) instead")
    p.add_argument("--before-after", action="store_true",
                   help="with --experiment (a Python one): also the harness with one worker "
                        "process per implementation (fresh_processes off), interleaved")
    p.add_argument("--harness", action="store_true",
                   help="time the synthetic kernel through the real driver and workers")
    p.add_argument("--min-effect", type=float)
    p.add_argument("--confidence", type=float)
    p.add_argument("--max-rounds", type=int)
    args = p.parse_args(argv)
    args.trials = args.trials or (30 if args.quick else 200)
    args.aa_trials = args.aa_trials or (60 if args.quick else 1000)

    report = stability.check_host()
    for w in report.warnings:
        print(f"warning: {w}")
    if args.pin:
        print(f"pinned to CPU {stability.pin_current_process()}")
    start = time.monotonic()
    if args.experiment:
        experiment_aa(args)  # run_eval takes the benchmark lock per trial
    else:
        overrides = {k: v for k, v in [("min_effect", args.min_effect),
                                       ("confidence", args.confidence),
                                       ("max_rounds", args.max_rounds)] if v is not None}
        acc = Acceptance(**overrides)
        (harness if args.harness else synthetic)(args, acc)
    print(f"\n{time.monotonic() - start:.0f}s total; load average now {report.load1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
