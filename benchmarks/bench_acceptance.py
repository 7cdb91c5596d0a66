"""How often does the acceptance rule accept, when we know the truth?

Synthetic mode (default): benchmarks/synthetic/spin.c is one calibrated busy loop; the
"candidate" runs it for (1 - effect) times the incumbent's iterations, so its true speed-up
is known. Each trial is a fresh process timed the way the harness times (warm-up, then per
round both implementations once in a random A-B / B-A order, one paired sample per round,
samples of ~--sample-us each). The harness's sequential pattern is replayed exactly: a batch
of `batch_rounds`, then `measure.needs_more_rounds`, until it says stop; then
`measure.decide`. For comparison, on the same data:
  * naive: "lower median wins" over the first min_rounds / all max_rounds rounds;
  * v0: the first ratchetloop rule (t interval on log-ratios, same looks, no correction).

Harness mode (--harness): the same kernel of known speed, timed through the real
evaluation path instead: a trusted driver and one seccomp-filtered worker process per
implementation, per-call input and output slots, each batch timed by the worker's CPU
clock read from outside (ratchetloop.harness.timing.measure, which applies
`needs_more_rounds` itself), a fresh driver and workers per trial; then `measure.decide`.

Experiment mode (--experiment linear): A/A on a real kernel -- the incumbent source is
evaluated against a byte-for-byte copy of itself through ratchetloop.evaluate.run_eval, many
times, and the accept rate, ratio CI and per-round noise are reported.

    .venv/bin/python benchmarks/bench_acceptance.py --quick
    .venv/bin/python benchmarks/bench_acceptance.py                 # full synthetic table
    .venv/bin/python benchmarks/bench_acceptance.py --harness --aa-trials 100 --trials 40
    .venv/bin/python benchmarks/bench_acceptance.py --experiment linear --aa-trials 50
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from ratchetloop import benchlock, stability
from ratchetloop.experiment import Acceptance
from ratchetloop.measure import decide, needs_more_rounds

HERE = Path(__file__).resolve().parent
SPIN_C = HERE / "synthetic" / "spin.c"
SPIN_KERNEL = HERE / "synthetic" / "spin_kernel.c"
SPIN_DRIVER = HERE / "synthetic" / "spin_driver.c"
EFFECTS = [0.0, 0.01, 0.03, 0.05, 0.10, -0.05]


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


# ---------------------------------------------------------------- rules


def sequential(cand: list[float], ref: list[float], acc: Acceptance) -> tuple[int, float]:
    """Replay the harness: batches until needs_more_rounds says stop; (rounds, seconds)."""
    rounds = 0
    while True:
        elapsed = sum(cand[:rounds]) / 1e6 + sum(ref[:rounds]) / 1e6
        if rounds and not needs_more_rounds({"c": cand[:rounds]}, {"c": ref[:rounds]}, acc,
                                            True, elapsed):
            return rounds, elapsed
        rounds += min(acc.batch_rounds, acc.max_rounds - rounds) or 1


def v0_rule(cand: list[float], ref: list[float], acc: Acceptance) -> bool:
    """The first version: t interval at `confidence` on every look, no correction."""
    looks = list(range(acc.batch_rounds, acc.max_rounds, acc.batch_rounds)) + [acc.max_rounds]
    threshold = math.log1p(-acc.min_effect)
    for n in looks:
        if n < acc.min_rounds:
            continue
        d = np.log(np.asarray(cand[:n]) / np.asarray(ref[:n]))
        mean, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(n)
        t = float(stats.t.ppf(1 - (1 - acc.confidence) / 2, n - 1))
        low, high = mean - t * se, mean + t * se
        if high < 0 and mean <= threshold:
            return True
        if low > 0 or high < 0 or low > threshold:
            return False
    return False


def naive_rule(cand: list[float], ref: list[float], n: int) -> bool:
    return statistics.median(cand[:n]) < statistics.median(ref[:n])


@dataclass
class Row:
    effect: float
    verdicts: dict[str, int] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    naive_min: int = 0
    naive_max: int = 0
    v0: int = 0
    others: bool = True  # the naive and v0 rules were replayed on the same data

    @property
    def trials(self) -> int:
        return len(self.rounds)

    def rate(self, k: int) -> str:
        return f"{100 * k / self.trials:5.1f}%"


def upper95(k: int, n: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound on a rate seen k times in n."""
    return 1.0 if k >= n else float(stats.beta.ppf(0.95, k + 1, n - k))


def synthetic(args: argparse.Namespace, acc: Acceptance) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="bench-acceptance-"))
    try:
        binary = build_spin(work)
        iters = calibrate(binary, args.sample_us)
        print(f"spin: {iters} iterations ~ {args.sample_us:g} us per call; acceptance "
              f"min_effect={acc.min_effect} confidence={acc.confidence} rounds "
              f"{acc.min_rounds}..{acc.max_rounds} by {acc.batch_rounds}\n", flush=True)
        rows = []
        for effect in args.effects:
            cand_iters = max(1, round(iters * (1 - effect)))
            n_trials = args.aa_trials if effect == 0 else args.trials
            row = Row(effect)
            for t in range(n_trials):
                seed = args.seed * 1_000_003 + t * 7919 + int(effect * 1e4)
                with benchlock.bench_lock("bench_acceptance"):  # per trial: others interleave
                    cand, ref = run_spin(binary, iters, cand_iters, acc.max_rounds, seed)
                rounds, secs = sequential(cand, ref, acc)
                dec = decide({"c": {"candidate": cand[:rounds], "best": ref[:rounds]}},
                             "best", acc)
                o = dec.overall
                row.verdicts[o.verdict] = row.verdicts.get(o.verdict, 0) + 1
                row.rounds.append(rounds)
                row.seconds.append(secs)
                row.ratios.append(o.ratio)
                row.noise.append(o.noise)
                row.naive_min += naive_rule(cand, ref, acc.min_rounds)
                row.naive_max += naive_rule(cand, ref, acc.max_rounds)
                row.v0 += v0_rule(cand, ref, acc)
            rows.append(row)
            print_row(row, header=len(rows) == 1)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_row(row: Row, header: bool) -> None:
    if header:
        print("| true speed-up | trials | ratchetloop accept | better/same/worse | "
              "mean rounds | s/decision | median ratio | noise/round | naive n=min | "
              "naive n=max | v0 t-rule |")
        print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    v = row.verdicts
    acc_k = v.get("better", 0)
    bound = f" (<= {100 * upper95(acc_k, row.trials):.1f}%)" if row.effect <= 0 else ""
    print(f"| {row.effect:+.0%} | {row.trials} | {row.rate(acc_k)}{bound} | "
          f"{acc_k}/{v.get('same', 0)}/{v.get('worse', 0)} | "
          f"{statistics.mean(row.rounds):.1f} | {statistics.mean(row.seconds):.3f} | "
          f"{statistics.median(row.ratios):.4f} | {100 * statistics.median(row.noise):.2f}% | "
          + (f"{row.rate(row.naive_min)} | {row.rate(row.naive_max)} | {row.rate(row.v0)} |"
             if row.others else "- | - | - |"), flush=True)


# ---------------------------------------------------------------- through the harness


def harness(args: argparse.Namespace, acc: Acceptance) -> list[Row]:
    """The spin kernel through the real driver/worker path: one build per effect, a fresh
    driver and workers per trial, sequential stopping inside `measure`."""
    from ratchetloop.harness import cbuild
    from ratchetloop.harness.timing import BenchProcess, measure

    target = cbuild.CTarget("spin", "void {name}(float *out, const float *in, long iters)")
    work = Path(tempfile.mkdtemp(prefix="bench-acceptance-harness-"))
    try:
        iters = calibrate(build_spin(work), args.sample_us)
        kernel = SPIN_KERNEL.read_text(encoding="utf-8")

        def source(name: str, effect: float) -> cbuild.Impl:
            path = work / f"{name}.c"
            path.write_text(f"#define WORK {round(1000 * (1 - effect))}\n{kernel}")
            return cbuild.Impl(name, path)

        print(f"spin through the harness: {iters} iterations ~ {args.sample_us:g} us per "
              f"call; acceptance min_effect={acc.min_effect} confidence={acc.confidence} "
              f"rounds {acc.min_rounds}..{acc.max_rounds} by {acc.batch_rounds}\n",
              flush=True)
        rows = []
        for effect in args.effects:
            tag = f"e{round(effect * 1000)}"
            build = cbuild.build(target, [source(f"cand_{tag}", effect), source("best", 0.0)],
                                 [SPIN_DRIVER], work / tag, check=False)
            workers = [("candidate", build.workers[0].binary), ("best", build.workers[1].binary)]
            row = Row(effect, others=False)
            for t in range(args.aa_trials if effect == 0 else args.trials):
                seed = args.seed * 1_000_003 + t * 7919 + int(effect * 1e4)
                with benchlock.bench_lock("bench_acceptance"):
                    bench = BenchProcess(build.driver, cwd=work)
                    try:
                        timing = measure(bench, [("spin", [iters])], workers, acc, seed=seed,
                                         min_sample_us=args.sample_us / 2)
                    finally:
                        bench.close()
                o = decide(timing.samples, "best", acc).overall
                row.verdicts[o.verdict] = row.verdicts.get(o.verdict, 0) + 1
                row.rounds.append(timing.rounds)
                row.seconds.append(timing.seconds)
                row.ratios.append(o.ratio)
                row.noise.append(o.noise)
            rows.append(row)
            print_row(row, header=len(rows) == 1)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- real experiment A/A


def experiment_aa(args: argparse.Namespace) -> None:
    from ratchetloop import evaluate
    from ratchetloop.experiment import load

    exp = load(args.experiment)
    source = exp.naive_path.read_text(encoding="utf-8")
    acc = exp.acceptance
    print(f"A/A on experiment {exp.name}: candidate == incumbent ({exp.naive}), "
          f"{args.aa_trials} trials, acceptance {acc.model_dump()}", flush=True)
    verdicts: dict[str, int] = {}
    rounds, walls, noise, ratios = [], [], [], []
    case_accepts = 0
    for t in range(args.aa_trials):
        res = evaluate.run_eval(exp, source, {"best": source}, validate=False, seed=t)
        if not res.ok:
            print(f"trial {t}: eval failed: {res.failure}", file=sys.stderr)
            continue
        dec = decide(res.samples, "best", acc, exp.lower_is_better)
        o = dec.overall
        verdicts[o.verdict] = verdicts.get(o.verdict, 0) + 1
        case_accepts += bool(dec.better_cases)
        rounds.append(o.rounds)
        walls.append(res.wall_seconds)
        noise.append(o.noise)
        ratios.append(o.ratio)
        print(f"  trial {t}: {o.summary()} wall {res.wall_seconds:.1f}s", flush=True)
    n = len(rounds)
    if not n:
        print("no successful trials")
        return
    k = verdicts.get("better", 0)
    print("\n| experiment | trials | accept (overall) | any case accepted | verdicts | "
          "mean rounds | s/eval | ratio median [min, max] | noise/round |")
    print("|---|---:|---:|---:|---|---:|---:|---|---:|")
    print(f"| {exp.name} A/A | {n} | {100 * k / n:.1f}% (<= {100 * upper95(k, n):.1f}%) | "
          f"{100 * case_accepts / n:.1f}% | {verdicts} | {statistics.mean(rounds):.1f} | "
          f"{statistics.mean(walls):.1f} | {statistics.median(ratios):.4f} "
          f"[{min(ratios):.4f}, {max(ratios):.4f}] | {100 * statistics.median(noise):.2f}% |")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few trials: a smoke run in ~1 min")
    p.add_argument("--trials", type=int, default=None, help="trials per nonzero effect")
    p.add_argument("--aa-trials", type=int, default=None, help="trials at effect 0 / A/A")
    p.add_argument("--effects", type=float, nargs="+", default=EFFECTS)
    p.add_argument("--sample-us", type=float, default=1000.0,
                   help="length of one timed call (the harness's min_sample_us)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pin", action="store_true", help="pin to one CPU like the harness")
    p.add_argument("--experiment", help="A/A on a real experiment (e.g. linear) instead")
    p.add_argument("--harness", action="store_true",
                   help="time the synthetic kernel through the real driver and workers")
    p.add_argument("--min-effect", type=float)
    p.add_argument("--confidence", type=float)
    p.add_argument("--max-rounds", type=int)
    args = p.parse_args(argv)
    args.trials = args.trials or (30 if args.quick else 200)
    args.aa_trials = args.aa_trials or (60 if args.quick else 600)

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
