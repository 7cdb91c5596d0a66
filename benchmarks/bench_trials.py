"""Paired rounds against known-noise acceptance on simulated runs of known noise and cost.

No run really happens and nothing sleeps: a run is a draw from a lognormal of the given
noise (sd of the log), and costs the given seconds on a simulated clock (300 s, 40 s and
2 s runs). Both modes run
production's code on those draws:
  * paired: generic mode's loop (generic/workspace.py run_eval) -- rounds of candidate +
    incumbent in batches of `measure.rounds_to_next_look`, `measure.needs_more_rounds`
    with the simulated elapsed time against max_seconds, then `measure.compare(final=True)`;
  * known noise: `trials.evaluate` (what generic/knownnoise.py calls), the noise known
    from 5 seed runs at setup.
Acceptance: `ratchet init`'s defaults (min_effect 1%, confidence 95%, max_seconds 300,
min_rounds 5, max_rounds 20) plus the known-noise defaults (confirm 1, max_runs 3,
recheck_every 20).

Per decision (a fresh seed measurement each, so the rates average over the noise estimate
as the guarantee does): runs per decision, A/A false-accept rate with its one-sided 95%
upper bound, power at 10 sigma (a 2% gain at 0.2% noise) and at a borderline gain
(min_effect + 1 sigma).

Per hour (a loop): a stream of candidates through ONE state, as `ratchet run` sees them
(80% no gain, 10% a 0.5% gain, 10% a 10-sigma gain; a winner becomes the incumbent, drift
checks and confirmations included) -> experiments per hour, against one run per candidate
(the original loop: keep when the one run beats the best, so 3600 / cost an hour), and the
false-accept rate of each on an all-A/A stream.

    .venv/bin/python benchmarks/bench_trials.py            # full table
    .venv/bin/python benchmarks/bench_trials.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ratchetloop import measure, trials  # noqa: E402
from ratchetloop.experiment import Acceptance  # noqa: E402
from ratchetloop.generic.init import DEFAULT_ACCEPTANCE  # noqa: E402

SEED_RUNS = 5
STREAM_MIX = ((0.8, 0.0), (0.1, 0.005), (0.1, 0.02))  # (share, true gain) of candidates


@dataclass
class Clock:
    seconds: float = 0.0


class Runs:
    """Simulated runs: lognormal draws of a level, each costing `cost` simulated seconds."""

    def __init__(self, sigma: float, cost: float, rng: np.random.Generator, clock: Clock):
        self.sigma, self.cost, self.rng, self.clock = sigma, cost, rng, clock

    def draw(self, level: float) -> float:
        self.clock.seconds += self.cost
        return float(level * math.exp(self.rng.normal(0.0, self.sigma)))

    def of(self, level: float) -> Callable[[], float | None]:
        return lambda: self.draw(level)


def paired(runs: Runs, cand: float, inc: float, acc: Acceptance) -> tuple[bool, int]:
    """One paired evaluation as generic mode runs it: (accepted, runs taken)."""
    start = runs.clock.seconds
    c: list[float] = []
    r: list[float] = []
    while True:
        for _ in range(measure.rounds_to_next_look(len(c), acc)):
            c.append(runs.draw(cand))
            r.append(runs.draw(inc))
        if not measure.needs_more_rounds({"m": c}, {"m": r}, acc, True,
                                         runs.clock.seconds - start):
            break
    return measure.compare(c, r, acc, True, final=True).verdict == "better", 2 * len(c)


def seeded_state(runs: Runs, level: float) -> trials.TrialState:
    state = trials.TrialState()
    state.start_group("inc", [runs.draw(level) for _ in range(SEED_RUNS)])
    state.add_seconds([runs.cost] * SEED_RUNS)
    return state


def known(runs: Runs, state: trials.TrialState, cand: float, inc: float, inc_key: str,
          cand_key: str, acc: Acceptance) -> tuple[bool, int]:
    """One known-noise evaluation: (accepted, runs taken), the incumbent's re-runs counted."""
    start = runs.clock.seconds
    trial = trials.evaluate(state, inc_key, cand_key, acc, True, runs.of(cand), runs.of(inc),
                            lambda: runs.clock.seconds - start)
    assert trial.comparison is not None
    return trial.comparison.verdict == "better", len(trial.candidate) + len(trial.fresh)


def per_decision(mode: str, gain: float, sigma: float, cost: float, acc: Acceptance, n: int,
                 seed: int) -> tuple[float, float, int]:
    """(accept rate, mean runs per decision, accepts) over n independent decisions."""
    rng, clock = np.random.default_rng(seed), Clock()
    runs = Runs(sigma, cost, rng, clock)
    accepted = taken = 0
    for _ in range(n):
        if mode == "paired":
            ok, k = paired(runs, 1.0 - gain, 1.0, acc)
        else:
            ok, k = known(runs, seeded_state(runs, 1.0), 1.0 - gain, 1.0, "inc", "c", acc)
        accepted += ok
        taken += k
    return accepted / n, taken / n, accepted


def stream(mode: str, sigma: float, cost: float, acc: Acceptance, n: int, seed: int,
           mix: tuple[tuple[float, float], ...] = STREAM_MIX) -> tuple[float, int, int]:
    """A loop of n candidates through one state: (experiments per hour, A/A candidates,
    A/A candidates accepted)."""
    rng, clock = np.random.default_rng(seed), Clock()
    runs = Runs(sigma, cost, rng, clock)
    level, key = 1.0, "v0"
    state = seeded_state(runs, level)
    setup = clock.seconds
    shares = np.array([s for s, _ in mix])
    aa = false = 0
    for i in range(n):
        gain = mix[int(rng.choice(len(mix), p=shares / shares.sum()))][1]
        cand, cand_key = level * (1.0 - gain), f"v{i + 1}"
        if mode == "paired":
            ok, _ = paired(runs, cand, level, acc)
        elif mode == "one_run":  # the original loop: keep when one run beats the best's
            ok = runs.draw(cand) < level * math.exp(rng.normal(0.0, sigma))
        else:
            ok, _ = known(runs, state, cand, level, key, cand_key, acc)
        aa += gain == 0.0
        false += ok and gain == 0.0
        if ok:
            level, key = cand, cand_key
            state.promote(cand_key)
    return 3600.0 * n / (clock.seconds - setup), aa, false


def upper95(k: int, n: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound on a rate of k in n."""
    if k >= n:
        return 1.0
    return float(measure._stats().beta.ppf(0.95, k + 1, n - k))


def guarantee(acc: Acceptance, sigma: float, n: int) -> None:
    """The level itself, with min_effect 0 (at 1% an A/A cannot look 5 sigma better, so
    the table's 0% says little): known noise with its t bound, the same with a z bound
    (the noise estimate's df taken as infinite), and paired rounds at 2 s."""
    zero = acc.model_copy(update={"min_effect": 0.0})
    t_rate, _, k = per_decision("known_noise", 0.0, sigma, 40.0, zero, n, 21)
    pooled = trials.pooled_noise

    def as_z(groups: list[list[float]], *, log: bool) -> trials.Noise | None:
        noise = pooled(groups, log=log)
        return None if noise is None else trials.Noise(noise.sd, 10**9, noise.log)

    trials.pooled_noise = as_z
    try:
        z_rate, _, _ = per_decision("known_noise", 0.0, sigma, 40.0, zero, n, 21)
    finally:
        trials.pooled_noise = pooled
    p_rate, _, pk = per_decision("paired", 0.0, sigma, 2.0, zero, n, 22)
    print(f"min_effect 0, A/A false accepts (bound {(1 - acc.confidence) / 2:.1%}): known noise"
          f" {t_rate:.2%} (<={upper95(k, n):.2%}); the same with a z bound {z_rate:.2%};"
          f" paired at 2 s {p_rate:.2%} (<={upper95(pk, n):.2%})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer trials (a smoke run)")
    p.add_argument("--noise", type=float, default=0.002, help="sd of log(run), 0.002 = 0.2%%")
    args = p.parse_args(argv)
    aa_n, power_n, stream_n, streams = ((300, 100, 100, 3) if args.quick
                                        else (3000, 500, 400, 10))
    acc = Acceptance(**DEFAULT_ACCEPTANCE)
    sigma = args.noise
    borderline = acc.min_effect + sigma
    print(f"noise {sigma:.2%} per run; min_effect {acc.min_effect:.0%}, confidence"
          f" {acc.confidence:.0%}, max_seconds {acc.max_seconds:.0f}; 10 sigma ="
          f" {10 * sigma:.1%} gain, borderline = {borderline:.1%}")
    print(f"{'run':>5} {'mode':<11} {'runs/dec':>9} {'A/A accepts':>18} {'power 10s':>10}"
          f" {'power bord.':>11} {'exp/hour':>9} {'of 1-run':>9} {'loop A/A accepts':>18}")
    for cost in (300.0, 40.0, 2.0):
        state = trials.TrialState()
        state.start_group("s", list(np.exp(np.random.default_rng(1).normal(0, sigma, 5))))
        state.add_seconds([cost])
        picked, why = trials.choose(acc, state)
        one_rate, _, _ = stream("one_run", sigma, cost, acc, stream_n, 5)
        _, one_aa, one_false = stream("one_run", sigma, cost, acc, stream_n, 6, ((1.0, 0.0),))
        for mode in ("paired", "known_noise", "one_run"):
            if mode == "one_run":
                print(f"{cost:>4.0f}s {'one run':<11} {1:>9.2f} {'-':>18} {'-':>10} {'-':>11}"
                      f" {one_rate:>9.1f} {'100%':>9}"
                      f" {one_false / one_aa:>9.1%} of {one_aa:<5}")
                continue
            aa, runs_aa, k = per_decision(mode, 0.0, sigma, cost, acc, aa_n, 11)
            p10, runs_10, _ = per_decision(mode, 10 * sigma, sigma, cost, acc, power_n, 12)
            pb, _, _ = per_decision(mode, borderline, sigma, cost, acc, power_n, 13)
            rates = [stream(mode, sigma, cost, acc, stream_n, 100 + s)[0] for s in range(streams)]
            loop_aa = [stream(mode, sigma, cost, acc, stream_n, 200 + s, ((1.0, 0.0),))
                       for s in range(max(1, streams // 2))]
            n_aa, n_false = sum(x[1] for x in loop_aa), sum(x[2] for x in loop_aa)
            rate = float(np.mean(rates))
            print(f"{cost:>4.0f}s {mode:<11} {runs_aa:>4.2f}/{runs_10:<4.2f}"
                  f" {aa:>6.2%} (<={upper95(k, aa_n):.2%}) {p10:>10.1%} {pb:>11.1%}"
                  f" {rate:>9.1f} {rate / one_rate:>9.0%}"
                  f" {n_false / n_aa:>6.2%} (<={upper95(n_false, n_aa):.2%})")
        print(f"       auto picks {picked} ({why})")
    guarantee(acc, sigma, aa_n)
    print("runs/dec: A/A / 10-sigma decisions (known noise: incumbent re-runs included);"
          " exp/hour: loop stream, setup excluded; loop A/A accepts: an all-A/A stream"
          " through one state (<= one-sided 95% upper bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
