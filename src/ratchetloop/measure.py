"""Paired timing statistics and the acceptance decision: one rule for every mode.

eval.py (or generic mode's runner) returns, per case, per-round samples of the candidate
and of each reference, timed interleaved in one session (each implementation in its own
worker process) with the order randomised per round. Everything here works on the paired
log-ratios d_i = log(candidate_i / reference_i) (sign flipped for higher-is-better, so
d < 0 always means "candidate better"): host drift that hits both sides of a round cancels
out. `decide` is the only entry point production and the benchmarks use; `compare` judges
one pair of series; `needs_more_rounds` / `rounds_to_next_look` drive the harnesses.

Why these statistics
--------------------
* Test: Wilcoxon signed-rank (scipy._stats().wilcoxon) on d, with the Hodges-Lehmann
  estimate (median of Walsh averages) and its distribution-free confidence interval.
  Randomising the A/B order every round makes d exactly symmetric about 0 when the two
  sides are the same code, which is the one assumption the signed-rank test needs -- so
  the false-accept guarantee holds with no normality assumption. It is also robust: on a
  shared machine a round hit by a context switch gives one huge |d|; that moves a t-test's
  mean and blows up its variance, but only moves one rank here. Efficiency versus the
  t-test is 95% on normal noise and far better on the heavy-tailed noise real hosts make.
* Minimum effect: "better" needs significance against 0 AND a point estimate at least
  `min_effect` better; "same" is declared as soon as the data confidently rule out a gain
  of `min_effect` (a one-sided test against the shifted null); "worse" when confidently
  slower. "unsure" only while more rounds could still change the answer: at the final
  look (rounds or time budget exhausted) an unproven candidate is "same" -- rejected.
* Repeated looks: the planned looks are the early look at EARLY_ROUNDS = 3 rounds, then
  every multiple of `batch_rounds` from `min_rounds` on, then `max_rounds`. Looking K times
  at alpha each would inflate the false-accept rate up to K*alpha, so the total
  alpha = 1 - confidence is *spent*: the early look gets EARLY_SHARE * alpha, the later
  looks share the rest by the power function (1 - EARLY_SHARE) * alpha * t**2
  (t = rounds / max_rounds): early regular looks get a little (they stop only for large,
  obvious effects), the last look gets most. Per-look levels sum to alpha, so by the union
  bound the chance of ANY false accept over the whole sequence is <= alpha/2 (the accept
  side of a two-sided level; the early look's term under its own assumption, below)
  whatever the dependence between looks -- simpler and more
  robust than Lan-DeMets boundaries, which need joint normality, at the cost of a little
  power. Confidence intervals reported at each look use that look's level.
* The early look (gross differences -- 2x either way, a zero metric -- decided in 3
  rounds). At n = 3 no test that assumes only symmetry can help: given the |d_i| the 8
  sign patterns are equally likely, so such a test cannot reject at a level below 1/8
  (the signed-rank's smallest one-sided p at n = 3 is exactly 1/8). Nor can the t-test's
  conservativeness under that orthant symmetry (Efron 1969) reach n = 3 at these levels:
  two-point noise d = +-a (a position effect -- whoever runs second is faster -- or a
  flaky discrete metric) puts all three rounds on the candidate's side with probability
  1/8, and the t statistic is then infinite. So the early look adds an assumption and
  makes it cheap:
    - a one-sample t-test on d at the early share. It is exact for normal noise and
      conservative for the heavier tails hosts make (simulated one-sided level at the
      defaults' nominal 0.125%: normal 0.124%, Laplace 0.076%, Student t2 0.077%, Cauchy
      0.054%, 10% of rounds 10x noisier 0.097%; but uniform noise 0.29%, two-point 12%);
    - so an early "better" also needs the estimate to be at least EARLY_MIN_EFFECT better
      (candidate/reference <= 1 - EARLY_MIN_EFFECT, i.e. 1.5x): to be falsely accepted,
      the same code must look 1.5x faster in all three randomised rounds and agree to
      within ~9% (t > 20 at the defaults). Noise does not do that; a broken measurement
      might, and
      generic mode's zero-variance rule (below) already trusts three equal rounds;
    - early "worse"/"same" use the t-test at the early share of REJECT_ALPHA; a wrong
      early reject costs power only, which bench_acceptance.py measures.
  Every later look uses the signed-rank rule, so a gross effect the early look misses (an
  outlier round among the three) is still caught at the regular looks.
* Rejecting early ("same" / "worse") cannot cause a false accept, only cost power, so it
  uses a looser total level, REJECT_ALPHA = 5%, spent the same way: a candidate that is
  merely as good as the incumbent is dismissed sooner.
* Several cases: per-case verdicts (for specialists / nonbest winners) divide alpha by
  the number of cases, so "some case falsely accepted" is also held at alpha/2.
* Deterministic metrics: when both sides are constant over >= 3 rounds there is no noise
  to test against, so the effect size alone decides (`exact_comparison`): better by at
  least min_effect, worse if any worse, else same. (Timings are never exactly constant;
  generic mode's counts and scores often are.)
* Non-positive metrics (a score of 0, a negative loss): log-ratios need values > 0, so
  both sides are shifted by the same constant first (`positive`); the verdict then tests
  the shifted ratio, and the reasons say so.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from .experiment import Acceptance
from .status import TimingProgress

Verdict = Literal["better", "worse", "same", "unsure"]

SPENDING_POWER = 2.0  # f(t) = alpha * t**rho; rho = 2 saves most alpha for the last look
REJECT_ALPHA = 0.05  # total level for stopping early with "same"/"worse" (costs power only)
SCIPY_EXACT_N = 50  # scipy.stats.wilcoxon's exact distribution reaches this far
EXACT_MAX_N = 200  # exact signed-rank distribution up to here, normal approximation above
EARLY_ROUNDS = 3  # the early look: gross differences stop here
EARLY_SHARE = 0.25  # share of alpha (and of REJECT_ALPHA) spent at the early look
EARLY_MIN_EFFECT = 1 / 3  # an early "better" must be >= 1.5x better (ratio <= 2/3)
SHIFTED = "metric shifted positive for the ratio test"


@dataclass
class Comparison:
    """One paired comparison: verdict plus the numbers SCORES.md and runs/<n>/ show."""

    verdict: Verdict
    ratio: float  # candidate / reference in the metric's own terms (Hodges-Lehmann)
    ci_low: float  # confidence interval on ratio at this look's level
    ci_high: float
    p_value: float  # one-sided p for "candidate better than reference"
    rounds: int
    candidate_median: float
    reference_median: float
    alpha: float = math.nan  # two-sided level of this look (after spending and cases)
    noise: float = math.nan  # robust sd of per-round log-ratios (~relative noise per round)
    lower_is_better: bool = True
    exhausted: bool = False  # budget ran out before a confident answer (counts as reject)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def speedup(self) -> float:
        """How many times better the candidate is (>1 means better), direction-aware."""
        if not self.ratio > 0:
            return math.nan
        return 1.0 / self.ratio if self.lower_is_better else self.ratio

    @property
    def accepted(self) -> bool:
        return self.verdict == "better"

    def summary(self) -> str:
        """One line for logs and SCORES.md: ratio, interval, rounds, verdict."""
        return (
            f"{self.verdict}: ratio {self.ratio:.4f} "
            f"[{self.ci_low:.4f}, {self.ci_high:.4f}] p={self.p_value:.2g} "
            f"n={self.rounds} noise={100 * self.noise:.1f}%"
        )


@dataclass
class Decision:
    """A whole EvalResult judged: overall against one reference, each case against its own."""

    reference: str
    overall: Comparison
    cases: dict[str, Comparison]

    @property
    def verdict(self) -> Verdict:
        return self.overall.verdict

    @property
    def better_cases(self) -> list[str]:
        return [name for name, c in self.cases.items() if c.verdict == "better"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "overall": self.overall.to_dict(),
            "cases": {k: v.to_dict() for k, v in self.cases.items()},
        }



def preload() -> None:
    """Import scipy.stats in a background thread now, so the first decision does not wait
    for it (the import lock makes a decision that comes first simply wait for it)."""
    threading.Thread(target=_stats, name="ratchet-preload-scipy", daemon=True).start()


def _stats() -> Any:
    """scipy.stats, imported at the first decision: it takes ~0.6 s to load, and commands
    that never decide (and the path to the first proposal) should not pay for it."""
    from scipy import stats

    return stats

# ---------------------------------------------------------------- sequential schedule


def looks(acceptance: Acceptance) -> list[int]:
    """Round counts at which a decision may be taken.

    The early look at EARLY_ROUNDS, then the multiples of batch_rounds from min_rounds on,
    then max_rounds itself (a harness batching to these lands exactly on them).
    """
    if acceptance.max_rounds <= EARLY_ROUNDS:
        return [acceptance.max_rounds]
    b = acceptance.batch_rounds
    first = -(-acceptance.min_rounds // b) * b
    regular = [n for n in range(first, acceptance.max_rounds, b) if n > EARLY_ROUNDS]
    return [EARLY_ROUNDS, *regular, acceptance.max_rounds]


def next_look(rounds: int, acceptance: Acceptance) -> int:
    """The round count of the next scheduled look at or after `rounds` (capped at max)."""
    for n in looks(acceptance):
        if n >= rounds:
            return n
    return acceptance.max_rounds


def rounds_to_next_look(rounds: int, acceptance: Acceptance) -> int:
    """How many rounds a harness should take now so its next question lands on a look.

    3 from zero (the early look), then up to min_rounds, then batch_rounds at a time.
    """
    return max(1, next_look(rounds + 1, acceptance) - rounds)


def paired_rounds_affordable(acceptance: Acceptance, run_seconds: float) -> int:
    """Rounds a paired evaluation takes before max_seconds stops it, batch by batch as the
    harnesses take them (candidate + incumbent: two runs a round)."""
    rounds, elapsed = 0, 0.0
    while rounds < acceptance.max_rounds and elapsed < acceptance.max_seconds:
        batch = min(rounds_to_next_look(rounds, acceptance), acceptance.max_rounds - rounds)
        rounds += batch
        elapsed += 2 * batch * run_seconds
    return rounds


def paired_can_decide(acceptance: Acceptance, run_seconds: float) -> bool:
    """Whether paired rounds at this run cost can reach the confidence at all within the
    time budget for a gain under 1.5x: some signed-rank look it reaches (the last one cut
    short by the budget included) must be able to reject even with every round on the
    candidate's side. (The issue-18 failure: 40 s runs, 300 s, 5 rounds: never.)"""
    last = paired_rounds_affordable(acceptance, run_seconds)
    points = [n for n in looks(acceptance) if EARLY_ROUNDS < n < last] + [last]
    return any(n > EARLY_ROUNDS and _critical_count(n, look_alpha(n, acceptance)) >= 0
               for n in points)


def _spent(i: int, points: list[int], alpha: float) -> float:
    """Alpha spent up to and including look i (the union bound's running total)."""
    if i < 0:
        return 0.0
    if len(points) == 1:
        return alpha
    early = EARLY_SHARE * alpha if points[0] == EARLY_ROUNDS else 0.0
    if i == 0 and early:
        return early
    return early + (alpha - early) * (points[i] / points[-1]) ** SPENDING_POWER


def look_alpha(rounds: int, acceptance: Acceptance, total: float | None = None) -> float:
    """Two-sided alpha spent at the look that `rounds` belongs to.

    A round count between scheduled looks (e.g. the time budget cut a batch short) is
    charged to the next scheduled look, which then can never be taken, so no share of
    alpha is ever used twice. The shares of all looks sum to `total` (default 1 - confidence).
    """
    alpha = 1.0 - acceptance.confidence if total is None else total
    points = looks(acceptance)
    idx = next(i for i, n in enumerate(points) if n >= min(rounds, points[-1]))
    return _spent(idx, points, alpha) - _spent(idx - 1, points, alpha)


# ---------------------------------------------------------------- signed-rank machinery


@lru_cache(maxsize=512)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T+ <= k) for k = 0..n(n+1)/2 under H0 (exact, by dynamic programming)."""
    dist = np.zeros(n * (n + 1) // 2 + 1)
    dist[0] = 1.0
    top = 0
    for rank in range(1, n + 1):
        top += rank
        shifted = dist[: top - rank + 1].copy()
        dist[: top + 1] *= 0.5
        dist[rank : top + 1] += 0.5 * shifted
    return np.cumsum(dist)


def _critical_count(n: int, alpha_two_sided: float) -> int:
    """Largest c with P(T+ <= c) <= alpha/2, or -1 when even T+ = 0 is not that rare."""
    half = alpha_two_sided / 2
    if n <= EXACT_MAX_N:
        cdf = _signed_rank_cdf(n)
        return int(np.searchsorted(cdf, half, side="right")) - 1
    mean = n * (n + 1) / 4
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return int(math.floor(mean + _stats().norm.ppf(half) * sd - 0.5))


def hodges_lehmann(d: np.ndarray, alpha_two_sided: float) -> tuple[float, float, float]:
    """Estimate and (1 - alpha) CI of the centre of d from its Walsh averages."""
    i, j = np.triu_indices(len(d))
    walsh = np.sort((d[i] + d[j]) / 2)
    c = _critical_count(len(d), alpha_two_sided)
    est = float(np.median(walsh))
    if c < 0:
        return est, -math.inf, math.inf
    return est, float(walsh[c]), float(walsh[len(walsh) - 1 - c])


def _p_less(x: np.ndarray) -> float:
    """One-sided signed-rank p-value for 'centre of x < 0'; ties at 0 split evenly.

    Without zeros or tied |x| (continuous timings), and up to SCIPY_EXACT_N where scipy
    uses the exact distribution too, it is read off the cached exact CDF: the same number
    as scipy's in microseconds instead of ~1 ms (a 13-case decision makes ~40 of these)."""
    if not np.any(x):
        return 1.0
    magnitudes = np.abs(x)
    n = len(x)
    if n <= SCIPY_EXACT_N and np.all(x != 0) and len(np.unique(magnitudes)) == n:
        ranks = np.empty(n, dtype=int)
        ranks[np.argsort(magnitudes)] = np.arange(1, n + 1)
        return float(_signed_rank_cdf(n)[int(ranks[x > 0].sum())])
    return float(_stats().wilcoxon(x, alternative="less", zero_method="zsplit").pvalue)


def _t_p_less(x: np.ndarray) -> float:
    """One-sided t-test p-value for 'mean of x < 0' (zero spread: the sign decides)."""
    mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
    if sd == 0.0:
        return 0.0 if mean < 0 else 1.0
    return float(_stats().t.cdf(mean / (sd / math.sqrt(len(x))), len(x) - 1))


def _t_interval(d: np.ndarray, alpha_two_sided: float) -> tuple[float, float, float]:
    """Mean and its (1 - alpha) t interval: the early look's estimate and interval."""
    n, mean = len(d), float(np.mean(d))
    half = _stats().t.ppf(1 - alpha_two_sided / 2, n - 1) * float(np.std(d, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def _robust_sd(d: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


# ---------------------------------------------------------------- special metrics


def positive(cand: list[float], ref: list[float]) -> tuple[list[float], list[float]]:
    """Both sides shifted by one constant so every value is > 0 (log-ratios need it).

    The shift (1 - min + max |v|) keeps differences and puts the smallest value at least
    max |v| + 1 away from zero, so one near-zero round cannot dominate the ratios.
    """
    both = cand + ref
    if not both or min(both) > 0:
        return cand, ref
    shift = 1.0 - min(both) + max(abs(v) for v in both)
    return [v + shift for v in cand], [v + shift for v in ref]


def _constant(values: list[float]) -> bool:
    return len(values) >= 1 and max(values) == min(values)


def exact_comparison(c: float, r: float, n: int, acc: Acceptance,
                     lower: bool) -> Comparison:
    """A deterministic metric: no noise, so the effect size is the whole answer."""
    gain = (r - c) if lower else (c - r)
    rel = gain / abs(r) if r else (math.inf if gain > 0 else (-math.inf if gain < 0 else 0.0))
    verdict: Verdict = ("better" if rel >= acc.min_effect and gain > 0 else
                        "worse" if gain < 0 else "same")
    ratio = c / r if c > 0 and r > 0 else math.nan
    return Comparison(
        verdict=verdict, ratio=ratio, ci_low=ratio, ci_high=ratio,
        p_value=0.0 if verdict == "better" else 1.0, rounds=n, candidate_median=c,
        reference_median=r, noise=0.0, lower_is_better=lower,
        reasons=[f"zero variance: decided on the effect size ({rel:+.2%} vs min_effect"
                 f" {acc.min_effect:.1%})"])


# ---------------------------------------------------------------- the decision


def compare(
    candidate: list[float],
    reference: list[float],
    acceptance: Acceptance,
    lower_is_better: bool = True,
    *,
    final: bool = False,
    family: int = 1,
) -> Comparison:
    """Decide on paired samples: better only if significant AND at least min_effect.

    `final` says no more rounds will come (budget exhausted), so "unsure" becomes a
    reject ("same", exhausted=True). `family` is how many comparisons share alpha
    (per-case verdicts), each getting alpha / family. Constant samples on both sides
    (>= 3 rounds) are decided on the effect size; non-positive values are shifted first.
    """
    cand = [float(v) for v in candidate]
    ref = [float(v) for v in reference]
    n = min(len(cand), len(ref))
    cand, ref = cand[:n], ref[:n]
    finite = all(math.isfinite(v) for v in cand + ref)
    if n >= EARLY_ROUNDS and finite and _constant(cand) and _constant(ref):
        return exact_comparison(cand[0], ref[0], n, acceptance, lower_is_better)
    med_c = float(np.median(cand)) if n else math.nan
    med_r = float(np.median(ref)) if n else math.nan
    alpha = look_alpha(n, acceptance) / max(1, family)
    reject_alpha = look_alpha(n, acceptance, max(REJECT_ALPHA, 1 - acceptance.confidence))
    reject_alpha /= max(1, family)
    base = dict(rounds=n, candidate_median=med_c, reference_median=med_r, alpha=alpha,
                lower_is_better=lower_is_better)
    if n < EARLY_ROUNDS or not finite:
        why = "fewer than 3 rounds" if n < EARLY_ROUNDS else "non-finite samples"
        verdict: Verdict = "same" if final else "unsure"
        return Comparison(verdict, math.nan, math.nan, math.nan, 1.0, exhausted=final,
                          reasons=[why], **base)  # type: ignore[arg-type]
    reasons: list[str] = []
    c, r = positive(cand, ref)
    if (c, r) != (cand, ref):
        reasons.append(SHIFTED)
    d = np.log(np.asarray(c) / np.asarray(r))
    if not lower_is_better:
        d = -d
    threshold = math.log1p(-acceptance.min_effect)  # <= 0: the gain that is worth keeping
    early = n == EARLY_ROUNDS
    if early:  # see "The early look" in the module docstring
        est, low, high = _t_interval(d, alpha)
        p_less = _t_p_less
        gate = min(threshold, math.log1p(-EARLY_MIN_EFFECT))
    else:
        est, low, high = hodges_lehmann(d, alpha)
        p_less = _p_less
        gate = threshold
    half = alpha / 2
    p_better = p_less(d)
    exhausted = False
    # Tests evaluated lazily, in order (scipy's wilcoxon is ~1 ms a call).
    if not early and n < acceptance.min_rounds and not final:
        verdict = "unsure"
        reasons.append(f"{n} < min_rounds {acceptance.min_rounds}")
    elif p_better <= half and est <= gate:
        verdict = "better"
    elif p_less(-d) <= reject_alpha / 2:
        verdict = "worse"
    elif p_less(threshold - d) <= reject_alpha / 2:  # confidently short of min_effect
        verdict = "same"
        reasons.append(
            "real gain but below min_effect" if p_better <= half else "no gain of min_effect"
        )
    elif final:
        verdict, exhausted = "same", True
        reasons.append("budget exhausted before a confident answer")
    else:
        verdict = "unsure"
    if early and verdict != "unsure":
        reasons.append(f"early look: t-test on {n} rounds")
    sign = 1.0 if lower_is_better else -1.0

    def to_ratio(x: float) -> float:
        return math.exp(sign * x)

    lo_r, hi_r = sorted((to_ratio(low), to_ratio(high)))
    return Comparison(
        verdict=verdict,
        ratio=to_ratio(est),
        ci_low=lo_r,
        ci_high=hi_r,
        p_value=p_better,
        noise=_robust_sd(d),
        exhausted=exhausted,
        reasons=reasons,
        **base,  # type: ignore[arg-type]
    )


def suite_totals(samples: dict[str, list[float]]) -> list[float]:
    """Per-round total over cases: the overall full-suite time of each round."""
    series = list(samples.values())
    if not series:
        return []
    n = min(len(s) for s in series)
    return [float(sum(s[i] for s in series)) for i in range(n)]


def _overall_series(per_case: dict[str, list[float]], primary: str | None) -> list[float]:
    if primary is not None and primary in per_case:
        return list(per_case[primary])
    return suite_totals(per_case)


def needs_more_rounds(
    candidate: dict[str, list[float]],
    reference: dict[str, list[float]],
    acceptance: Acceptance,
    lower_is_better: bool,
    elapsed_seconds: float,
    *,
    primary: str | None = None,
) -> bool:
    """Sequential sampling: keep measuring while the overall answer is unsure and budget lasts.

    Decides only at scheduled looks (see `looks`; the first is at 3 rounds); between them
    it asks for more rounds, so a harness taking other batches cannot spend alpha on
    unplanned looks. `rounds_to_next_look` says how many to take.
    """
    rounds = min((len(v) for v in candidate.values()), default=0)
    rounds = min(rounds, min((len(v) for v in reference.values()), default=0))
    if rounds >= acceptance.max_rounds or elapsed_seconds >= acceptance.max_seconds:
        return False
    if rounds != next_look(rounds, acceptance):
        return True
    overall = compare(
        _overall_series(candidate, primary),
        _overall_series(reference, primary),
        acceptance,
        lower_is_better,
    )
    return overall.verdict == "unsure"


def next_batch(
    samples: dict[str, dict[str, list[float]]],
    references: list[str],
    acceptance: Acceptance,
    lower_is_better: bool,
    elapsed_seconds: float,
    rounds: int,
    *,
    candidate: str = "candidate",
    primary: str | None = None,
) -> tuple[int, str]:
    """A harness's sampling step over samples[case][impl]: how many rounds to take next,
    or (0, why it stops): "decided", "budget", or "baseline" (no references: min_rounds
    of the candidate alone). Each batch ends on a scheduled look. The first look is
    always taken: checks and calibration of slow implementations may use up max_seconds,
    and a result with no rounds is no result."""
    if not references:
        if rounds >= acceptance.min_rounds:
            return 0, "baseline"
        return acceptance.batch_rounds, ""
    if rounds == 0:
        return min(rounds_to_next_look(0, acceptance), acceptance.max_rounds), ""
    unsure = [ref for ref in references if needs_more_rounds(
        {c: samples[c][candidate] for c in samples}, {c: samples[c][ref] for c in samples},
        acceptance, lower_is_better, elapsed_seconds, primary=primary)]
    if not unsure:
        within = rounds < acceptance.max_rounds and elapsed_seconds < acceptance.max_seconds
        return 0, "decided" if within else "budget"
    return min(rounds_to_next_look(rounds, acceptance), acceptance.max_rounds - rounds) or 1, ""


def progress(
    samples: dict[str, dict[str, list[float]]],
    references: list[str],
    acceptance: Acceptance,
    lower_is_better: bool,
    rounds: int,
    *,
    candidate: str = "candidate",
    primary: str | None = None,
) -> TimingProgress:
    """Where a harness's sampling stands after a batch, for the live view: rounds done of
    max_rounds and the candidate against the first reference (the incumbent) as `compare`
    sees it now. Display only: no decision reads it, and it spends no alpha."""
    if not references or rounds < 1:
        return TimingProgress(rounds, acceptance.max_rounds)
    ref = references[0]
    cmp = compare(_overall_series({c: samples[c][candidate] for c in samples}, primary),
                  _overall_series({c: samples[c][ref] for c in samples}, primary),
                  acceptance, lower_is_better)

    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return TimingProgress(rounds, acceptance.max_rounds, finite(cmp.ratio),
                          finite(cmp.ci_low), finite(cmp.ci_high), cmp.verdict)


def decide(
    samples: dict[str, dict[str, list[float]]],
    reference: str,
    acceptance: Acceptance,
    lower_is_better: bool = True,
    *,
    candidate: str = "candidate",
    primary: str | None = None,
    final: bool = True,
    case_references: dict[str, str] | None = None,
) -> Decision:
    """Judge an EvalResult's samples[case][impl]: the one rule production and benchmarks use.

    * overall: the `primary` case if given (and measured), else the per-round suite totals
      over the cases that have both `candidate` and `reference`, against `reference`;
    * per case: `candidate` against `case_references.get(case, reference)` (the loop passes
      each case's current specialist holder), the cases sharing alpha (family = number
      of cases judged), so "some case falsely accepted" stays within the overall level.
    `final` defaults to True: eval.py only stops when the sequential rule is done or the
    budget ran out, so anything still unsure is a reject.
    """
    refs = case_references or {}
    cand = {case: impls[candidate] for case, impls in samples.items()
            if candidate in impls and reference in impls}
    ref = {case: samples[case][reference] for case in cand}
    overall = compare(_overall_series(cand, primary), _overall_series(ref, primary),
                      acceptance, lower_is_better, final=final)
    judged = {case: (impls[candidate], impls[refs.get(case, reference)])
              for case, impls in samples.items()
              if candidate in impls and refs.get(case, reference) in impls}
    cases = {
        case: compare(c, r, acceptance, lower_is_better, final=final, family=len(judged))
        for case, (c, r) in judged.items()
    }
    return Decision(reference=reference, overall=overall, cases=cases)
