"""Known-noise acceptance: judge an expensive run (minutes of training) on one or two runs.

Paired interleaved rounds (measure.py) are right when a run is cheap and its noise large;
for a run that takes minutes and carries a small, stable noise they cost 2 runs a round and
many rounds. Here the noise is measured once -- from the seed's replicates at setup -- and
kept up to date from every incumbent run; the incumbent's runs are reused instead of
re-running it each iteration, and a candidate gets one run when that is enough.

The rule (on log values when every value is > 0, else on raw values)
--------------------------------------------------------------------
* Noise: the pooled within-group standard deviation s of the trusted runs, with its
  degrees of freedom df = sum(n_i - 1). A group is a stretch of runs of one incumbent
  version on one level: a new incumbent, or a drift check that found the level moved,
  starts a new group, so a level shift never inflates s.
* A candidate's k runs (mean x) against the incumbent's m current runs (mean y):
  d = x - y (sign flipped for higher-is-better, so d < 0 means better), standard error
  s * sqrt(1/k + 1/m), and T = d / se follows Student's t with df degrees of freedom when
  both sides are the same code (normal noise): s comes from within-group deviations, which
  are independent of the group means. This is the prediction-interval bound for k new runs
  given m old ones; with 5 seed runs df = 4, so the bound is wide (t_4) while the estimate
  is young and tightens as incumbent runs accumulate -- never a z with the point estimate.
* Looks: one after each candidate run, at most `plan.runs` of them (acceptance.max_runs,
  and no more than max_seconds pays for at the measured run cost). A commit needs
  `plan.confirm` more runs after the first (acceptance.confirm, when affordable), so an
  accept can only happen at looks k >= 1 + confirm. The accept side of alpha
  (alpha/2, alpha = 1 - confidence) is spent over those looks by power spending as in
  measure.py (t**2, here t = the look's index over the number of accept looks, with no
  early share), so by the union bound a same-as-incumbent candidate is accepted
  with probability <= alpha/2 whatever the stopping -- and "better" also needs the
  estimated gain to be at least min_effect.
* Rejects cost power only: "worse" (confidently worse) and "same" (confidently short of
  min_effect) at REJECT_ALPHA/2 one-sided per look, so an A/A or a bad candidate usually
  stops after one run. A candidate neither rejected nor accepted is borderline: it gets
  another run, up to the last look, where it is "same" (exhausted), as in paired mode.
* Zero noise (a deterministic metric: every trusted group constant): the effect size
  decides, as measure.exact_comparison does; a candidate whose own runs vary is rejected.
* Drift: every `recheck_every` candidates the incumbent runs once more; a run outside its
  prediction interval (two-sided, at alpha) starts a new group (plus one more run). The
  assumption the mode adds over paired rounds is that the level does not move between
  drift checks by more than the noise; paired mode assumes nothing about the host.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from .experiment import Acceptance
from .files import atomic_write_json, read_model
from .measure import (
    REJECT_ALPHA,
    SPENDING_POWER,
    Comparison,
    Verdict,
    _stats,
    exact_comparison,
    paired_can_decide,
)

Mode = Literal["paired", "known_noise"]
STATE = "trials.json"
MAX_GROUPS = 30  # older groups leave the pooled noise: it follows slow changes of the host
MAX_EPOCH = 30  # most runs of the current incumbent kept
BOOTSTRAP_KNOWN = 2  # runs of an incumbent with no runs on record, when the noise is known


def key_of(source: str) -> str:
    """The incumbent's identity: its bundle's hash."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


class TrialState(BaseModel):
    """trials.json: what the noise estimate and the reused incumbent runs rest on."""

    version: int = 1
    incumbent: str = ""  # key_of the incumbent bundle whose runs are in `runs`
    runs: list[float] = Field(default_factory=list)  # the incumbent's runs on the current level
    groups: list[list[float]] = Field(default_factory=list)  # earlier groups (pooled noise)
    seconds: list[float] = Field(default_factory=list)  # recent trusted run costs (wall)
    since_recheck: int = 0
    mode: str = ""
    why: str = ""
    channel: str = ""  # where the trusted runs report the metric ("fd"/"output")
    pending: str = ""  # key_of the last candidate judged; its runs in pending_runs
    pending_runs: list[float] = Field(default_factory=list)
    # CPU seconds of the trusted runs of the incumbent (and of the pending candidate), by
    # key_of: the plausibility check's reference when the candidate runs alone
    cpu: dict[str, list[float]] = Field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> TrialState:
        path = folder / STATE
        return read_model(path, cls) if path.is_file() else cls()

    def save(self, folder: Path) -> None:
        atomic_write_json(folder / STATE, self)

    def run_seconds(self) -> float | None:
        return float(np.median(self.seconds)) if self.seconds else None

    def add_seconds(self, values: list[float]) -> None:
        self.seconds = (self.seconds + [v for v in values if v and v > 0])[-20:]

    def start_group(self, key: str, values: list[float]) -> None:
        """A new incumbent (or a new level of the same one): close the current group."""
        if len(self.runs) >= 2:
            self.groups = (self.groups + [self.runs])[-MAX_GROUPS:]
        self.incumbent, self.runs = key, list(values)[-MAX_EPOCH:]

    def add_incumbent_runs(self, key: str, values: list[float]) -> None:
        if key != self.incumbent:
            self.start_group(key, values)
        else:
            self.runs = (self.runs + list(values))[-MAX_EPOCH:]

    def add_cpu(self, key: str, values: list[float | None]) -> None:
        """Keep the last runs' CPU seconds of `key`, and only of the incumbent and `key`."""
        keep = {self.incumbent, self.pending, key}
        runs = self.cpu.get(key, []) + [v for v in values if v is not None and v > 0]
        self.cpu = {k: v for k, v in self.cpu.items() if k in keep}
        self.cpu[key] = runs[-MAX_EPOCH:]

    def promote(self, key: str) -> None:
        """The judged candidate was committed: its runs are the new incumbent's."""
        if self.pending == key and self.pending_runs:
            self.start_group(key, self.pending_runs)
            self.since_recheck = 0
        self.pending, self.pending_runs = "", []

    def noise(self) -> Noise | None:
        return pooled_noise([*self.groups, self.runs], log=_all_positive(
            [v for g in self.groups for v in g] + self.runs))


@dataclass
class Noise:
    sd: float  # per-run standard deviation on the decision scale
    df: int
    log: bool  # decision scale: log values (sd ~ relative noise) or raw values

    def relative(self, level: float) -> float:
        """The noise as a fraction of the metric (for messages and the mode choice)."""
        if self.log:
            return self.sd
        return self.sd / abs(level) if level else math.inf


def _all_positive(values: list[float]) -> bool:
    return all(v > 0 for v in values)


def pooled_noise(groups: list[list[float]], *, log: bool) -> Noise | None:
    """Pooled within-group sd and its degrees of freedom; None with no replicate at all."""
    ss, df = 0.0, 0
    for g in groups:
        if len(g) < 2:
            continue
        x = np.log(g) if log else np.asarray(g, dtype=float)
        ss += float(np.sum((x - x.mean()) ** 2))
        df += len(g) - 1
    return Noise(math.sqrt(ss / df), df, log) if df else None


# ---------------------------------------------------------------- the plan and the looks


@dataclass
class Plan:
    runs: int  # most candidate runs (looks)
    confirm: int  # runs after the first before an accept may happen

    @property
    def accept_looks(self) -> list[int]:
        return list(range(1 + self.confirm, self.runs + 1))


def plan_for(acc: Acceptance, run_seconds: float | None) -> Plan:
    """Fixed before the candidate runs, from the contract and the measured run cost, so the
    schedule of looks (and the union bound over them) never depends on the data."""
    runs = acc.max_runs
    if run_seconds and run_seconds > 0:
        runs = max(1, min(runs, int(acc.max_seconds // run_seconds)))
    return Plan(runs=runs, confirm=min(acc.confirm, runs - 1))


def accept_alpha(k: int, plan: Plan, acc: Acceptance) -> float:
    """Two-sided alpha spent at look k (0 where no accept may happen); sums to 1 - confidence."""
    looks = plan.accept_looks
    if k not in looks:
        return 0.0
    j, total = looks.index(k) + 1, len(looks)
    return (1 - acc.confidence) * ((j / total) ** SPENDING_POWER
                                   - ((j - 1) / total) ** SPENDING_POWER)


def judge(cand: list[float], inc: list[float], noise: Noise | None, acc: Acceptance,
          lower_is_better: bool, plan: Plan, *, final: bool = False) -> Comparison:
    """The look after len(cand) candidate runs, against the incumbent's runs `inc`."""
    k, m = len(cand), len(inc)
    look_alpha = accept_alpha(k, plan, acc)
    last = final or k >= plan.runs
    base = dict(rounds=k, candidate_median=float(np.median(cand)),
                reference_median=float(np.median(inc)), lower_is_better=lower_is_better,
                alpha=look_alpha)
    if noise is None or m == 0:
        return Comparison("same", math.nan, math.nan, math.nan, 1.0, exhausted=True,
                          reasons=["no noise estimate"], **base)  # type: ignore[arg-type]
    if noise.sd == 0.0:
        return _exact(cand, inc, acc, lower_is_better, k in plan.accept_looks, last)
    log = noise.log and _all_positive(cand + inc)
    if not log and noise.log:  # a value <= 0 is off the log scale the noise was measured on
        return Comparison("same", math.nan, math.nan, math.nan, 1.0, reasons=[
            "a value <= 0 where the trusted runs were all > 0"], **base)  # type: ignore[arg-type]
    x = np.log(cand) if log else np.asarray(cand, dtype=float)
    y = np.log(inc) if log else np.asarray(inc, dtype=float)
    sign = 1.0 if lower_is_better else -1.0
    d = sign * float(x.mean() - y.mean())
    se = noise.sd * math.sqrt(1 / k + 1 / m)
    level = abs(float(np.mean(inc)))
    threshold = math.log1p(-acc.min_effect) if log else -acc.min_effect * level
    t = _stats().t
    p_better = float(t.cdf(d / se, noise.df))
    reasons = [f"known noise {noise.relative(level):.3%} per run (df {noise.df}); {k} candidate"
               f" run(s) against {m} incumbent run(s)"]
    verdict: Verdict
    exhausted = False
    if look_alpha and p_better <= look_alpha / 2 and d <= threshold:
        verdict = "better"
    elif float(t.sf(d / se, noise.df)) <= REJECT_ALPHA / 2:
        verdict = "worse"
    elif float(t.sf((d - threshold) / se, noise.df)) <= REJECT_ALPHA / 2:
        verdict = "same"
        reasons.append("confidently short of min_effect")
    elif last:
        verdict, exhausted = "same", True
        reasons.append("budget exhausted before a confident answer")
    else:
        verdict = "unsure"
        first = plan.accept_looks[0] if plan.accept_looks else plan.runs
        if k < first and d <= threshold:
            reasons.append(f"promising: {first - k} confirmation run(s) before a commit")
    # The interval at this look's level; where no accept may happen, at 1 - confidence.
    half = float(t.ppf(1 - (look_alpha or 1 - acc.confidence) / 2, noise.df)) * se

    def to_ratio(v: float) -> float:
        if log:
            return math.exp(sign * v)
        ref = float(np.mean(inc))
        return (ref + sign * v) / ref if ref else math.nan

    lo, hi = sorted((to_ratio(d - half), to_ratio(d + half)))
    return Comparison(verdict=verdict, ratio=to_ratio(d), ci_low=lo, ci_high=hi,
                      p_value=p_better, noise=noise.relative(level), exhausted=exhausted,
                      reasons=reasons, **base)  # type: ignore[arg-type]


def _exact(cand: list[float], inc: list[float], acc: Acceptance, lower: bool,
           may_accept: bool, last: bool) -> Comparison:
    """Zero noise on record: the effect size decides; varying candidate runs are refused."""
    if max(cand) != min(cand):
        cmp = exact_comparison(float(np.median(cand)), inc[-1], len(cand), acc, lower)
        cmp.verdict = "same"
        cmp.reasons = ["the candidate's runs vary where the trusted runs never did"]
        return cmp
    cmp = exact_comparison(cand[0], inc[-1], len(cand), acc, lower)
    if cmp.verdict == "better" and not may_accept and not last:
        cmp.verdict = "unsure"
        cmp.reasons.append("confirming before a commit")
    elif cmp.verdict == "better" and not may_accept:
        cmp.verdict = "same"
        cmp.reasons.append("no confirmation run fits the budget")
    return cmp


def drifted(fresh: float, inc: list[float], noise: Noise | None, acc: Acceptance) -> bool:
    """A fresh incumbent run outside the prediction interval of its earlier runs."""
    if noise is None or not inc:
        return False
    log = noise.log and _all_positive([fresh, *inc])
    x = math.log(fresh) if log else fresh
    y = np.log(inc) if log else np.asarray(inc, dtype=float)
    if noise.sd == 0.0:
        return bool(x != float(y.mean()))
    t = (x - float(y.mean())) / (noise.sd * math.sqrt(1 + 1 / len(inc)))
    return float(2 * _stats().t.sf(abs(t), noise.df)) <= 1 - acc.confidence


# ---------------------------------------------------------------- choosing the mode


def choose(acc: Acceptance, state: TrialState) -> tuple[Mode, str]:
    """Paired rounds or known noise, and why (one line for the output and the record)."""
    if acc.mode != "auto":
        return acc.mode, f"acceptance.mode is {acc.mode!r}"
    cost, noise = state.run_seconds(), state.noise()
    if cost is None or noise is None:
        return "paired", "auto: no run cost and noise measured yet"
    rel = noise.relative(float(np.mean(state.runs)) if state.runs else 0.0)
    if not paired_can_decide(acc, cost):
        return "known_noise", (f"auto: at {cost:.1f}s a run, paired rounds cannot reach"
                               f" {acc.confidence:.0%} confidence within max_seconds"
                               f" {acc.max_seconds:.0f}s; noise {rel:.2%} (df {noise.df})")
    if cost >= acc.auto_run_seconds and rel <= acc.min_effect:
        return "known_noise", (f"auto: a run takes {cost:.1f}s (>= auto_run_seconds"
                               f" {acc.auto_run_seconds:g}s) and its noise {rel:.2%} (df"
                               f" {noise.df}) is within min_effect {acc.min_effect:.1%}")
    if cost >= acc.auto_run_seconds:
        return "paired", (f"auto: a run takes {cost:.1f}s but its noise {rel:.2%} exceeds"
                          f" min_effect {acc.min_effect:.1%}: paired rounds")
    return "paired", (f"auto: a run takes {cost:.2f}s (< auto_run_seconds"
                      f" {acc.auto_run_seconds:g}s): paired interleaved rounds are cheap")


# ---------------------------------------------------------------- one evaluation


Run = Callable[[], float | None]  # one run: the metric, or None when it failed


@dataclass
class Trial:
    """What one known-noise evaluation did, for result.json and the decision."""

    candidate: list[float] = field(default_factory=list)
    incumbent: list[float] = field(default_factory=list)  # the runs the decision used
    fresh: list[float] = field(default_factory=list)  # incumbent runs taken this time
    comparison: Comparison | None = None
    failed: str = ""  # "candidate" or "best" when a run failed
    recheck: str = ""  # what the drift check found, if one ran

    def info(self) -> dict[str, object]:
        return {"candidate_runs": self.candidate, "incumbent_runs": len(self.incumbent),
                "fresh_incumbent_runs": self.fresh, "recheck": self.recheck}


def evaluate(state: TrialState, incumbent_key: str, candidate_key: str, acc: Acceptance,
             lower_is_better: bool, run_candidate: Run, run_incumbent: Run,
             elapsed: Callable[[], float]) -> Trial:
    """One candidate in known-noise mode: bootstrap or re-check the incumbent when due,
    then candidate runs until a look decides. Mutates `state` (the caller saves it)."""
    trial = Trial()

    def incumbent_runs(n: int) -> bool:
        for _ in range(n):
            value = run_incumbent()
            if value is None:
                trial.failed = "best"
                return False
            trial.fresh.append(value)
        return True

    if state.incumbent != incumbent_key or not state.runs:
        n = BOOTSTRAP_KNOWN if state.noise() is not None else max(3, acc.min_rounds)
        if not incumbent_runs(n):
            return trial
        state.start_group(incumbent_key, trial.fresh)
        state.since_recheck = 0
    elif state.since_recheck >= acc.recheck_every:
        if not incumbent_runs(1):
            return trial
        fresh = trial.fresh[-1]
        if drifted(fresh, state.runs, state.noise(), acc):
            trial.recheck = "drift: the incumbent's level moved; its runs start over"
            if not incumbent_runs(1):
                return trial
            state.start_group(incumbent_key, trial.fresh[-2:])
        else:
            trial.recheck = "no drift"
            state.add_incumbent_runs(incumbent_key, [fresh])
        state.since_recheck = 0
    state.since_recheck += 1
    trial.incumbent = list(state.runs)
    run_seconds, noise = state.run_seconds(), state.noise()
    plan, cost = plan_for(acc, run_seconds), run_seconds or 0.0
    while True:
        value = run_candidate()
        if value is None:
            trial.failed = "candidate"
            break
        trial.candidate.append(value)
        final = elapsed() + cost > acc.max_seconds
        trial.comparison = judge(trial.candidate, trial.incumbent, noise, acc,
                                 lower_is_better, plan, final=final)
        if trial.comparison.verdict != "unsure":
            break
    state.pending, state.pending_runs = candidate_key, list(trial.candidate)
    return trial
