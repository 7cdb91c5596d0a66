"""Paired timing statistics and the acceptance decision.

eval.py returns, per case, per-round samples of the candidate and of each reference, timed
interleaved in one session (each implementation in its own worker process) with the order
randomised per round. Everything here works on
the paired log-ratios d_i = log(candidate_i / reference_i) (sign flipped for
higher-is-better, so d < 0 always means "candidate better"): host drift that hits both
sides of a round cancels out.

Why these statistics
--------------------
* Test: Wilcoxon signed-rank (scipy.stats.wilcoxon) on d, with the Hodges-Lehmann
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
* Repeated looks: the harness samples `batch_rounds` at a time and looks at every batch
  boundary from `min_rounds` on, up to `max_rounds`. Looking K times at alpha each would
  inflate the false-accept rate up to K*alpha, so the total alpha = 1 - confidence is
  *spent* across the planned looks with the power function f(t) = alpha * t**2
  (t = rounds / max_rounds): early looks get a little (they stop only for large, obvious
  effects), the last look gets most. Per-look
  levels sum to alpha, so by the union bound the chance of ANY false accept over the
  whole sequence is <= alpha/2 (the accept side of a two-sided level) whatever the
  dependence between looks -- simpler and more robust than Lan-DeMets boundaries, which
  need joint normality, at the cost of a little power. Confidence intervals reported at
  each look use that look's level (repeated confidence intervals).
* Rejecting early ("same" / "worse") cannot cause a false accept, only cost power, so it
  uses a looser total level, REJECT_ALPHA = 5%, spent the same way: a candidate that is
  merely as good as the incumbent is dismissed sooner.
* Several cases: per-case verdicts (for specialists / nonbest winners) divide alpha by
  the number of cases, so "some case falsely accepted" is also held at alpha/2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy import stats

from .experiment import Acceptance

Verdict = Literal["better", "worse", "same", "unsure"]

SPENDING_POWER = 2.0  # f(t) = alpha * t**rho; rho = 2 saves most alpha for the last look
REJECT_ALPHA = 0.05  # total level for stopping early with "same"/"worse" (costs power only)
EXACT_MAX_N = 200  # exact signed-rank distribution up to here, normal approximation above


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

    def to_dict(self) -> dict:
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
    """A whole EvalResult judged against one reference: overall plus per-case."""

    reference: str
    overall: Comparison
    cases: dict[str, Comparison]

    @property
    def verdict(self) -> Verdict:
        return self.overall.verdict

    @property
    def better_cases(self) -> list[str]:
        return [name for name, c in self.cases.items() if c.verdict == "better"]

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "overall": self.overall.to_dict(),
            "cases": {k: v.to_dict() for k, v in self.cases.items()},
        }


# ---------------------------------------------------------------- sequential schedule


def looks(acceptance: Acceptance) -> list[int]:
    """Round counts at which a decision may be taken.

    The harness samples in batches of `batch_rounds` from zero, so the looks are the
    multiples of batch_rounds from min_rounds on, plus max_rounds itself.
    """
    b = acceptance.batch_rounds
    first = -(-acceptance.min_rounds // b) * b
    out = [n for n in range(first, acceptance.max_rounds, b)]
    out.append(acceptance.max_rounds)
    return out


def next_look(rounds: int, acceptance: Acceptance) -> int:
    """The round count of the next scheduled look at or after `rounds` (capped at max)."""
    for n in looks(acceptance):
        if n >= rounds:
            return n
    return acceptance.max_rounds


def look_alpha(rounds: int, acceptance: Acceptance, total: float | None = None) -> float:
    """Two-sided alpha spent at the look that `rounds` belongs to.

    A round count between scheduled looks (e.g. the time budget cut a batch short) is
    charged to the next scheduled look, which then can never be taken, so no share of
    alpha is ever used twice.
    """
    alpha = 1.0 - acceptance.confidence if total is None else total
    points = looks(acceptance)
    idx = next(i for i, n in enumerate(points) if n >= min(rounds, points[-1]))
    total = acceptance.max_rounds

    def spent(i: int) -> float:
        return 0.0 if i < 0 else alpha * (points[i] / total) ** SPENDING_POWER

    return spent(idx) - spent(idx - 1)


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
    return int(math.floor(mean + stats.norm.ppf(half) * sd - 0.5))


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
    """One-sided signed-rank p-value for 'centre of x < 0'; ties at 0 split evenly."""
    if not np.any(x):
        return 1.0
    return float(stats.wilcoxon(x, alternative="less", zero_method="zsplit").pvalue)


def _robust_sd(d: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


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
    (per-case verdicts), each getting alpha / family.
    """
    c = np.asarray(candidate, dtype=float)
    r = np.asarray(reference, dtype=float)
    n = min(len(c), len(r))
    c, r = c[:n], r[:n]
    med_c = float(np.median(c)) if n else math.nan
    med_r = float(np.median(r)) if n else math.nan
    alpha = look_alpha(n, acceptance) / max(1, family)
    reject_alpha = look_alpha(n, acceptance, max(REJECT_ALPHA, 1 - acceptance.confidence))
    reject_alpha /= max(1, family)
    base = dict(rounds=n, candidate_median=med_c, reference_median=med_r, alpha=alpha,
                lower_is_better=lower_is_better)
    bad = n < 3 or not (np.all(np.isfinite(c)) and np.all(np.isfinite(r)))
    if bad or np.any(c <= 0) or np.any(r <= 0):
        why = "fewer than 3 rounds" if n < 3 else "non-positive or non-finite samples"
        verdict: Verdict = "same" if final else "unsure"
        return Comparison(verdict, math.nan, math.nan, math.nan, 1.0, exhausted=final,
                          reasons=[why], **base)  # type: ignore[arg-type]

    d = np.log(c / r)
    if not lower_is_better:
        d = -d
    est, low, high = hodges_lehmann(d, alpha)
    threshold = math.log1p(-acceptance.min_effect)  # <= 0: the gain that is worth keeping
    half = alpha / 2
    p_better = _p_less(d)
    reasons: list[str] = []
    exhausted = False
    # Tests evaluated lazily, in order (scipy's wilcoxon is ~1 ms a call).
    if n < acceptance.min_rounds and not final:
        verdict = "unsure"
        reasons.append(f"{n} < min_rounds {acceptance.min_rounds}")
    elif p_better <= half and est <= threshold:
        verdict = "better"
    elif _p_less(-d) <= reject_alpha / 2:
        verdict = "worse"
    elif _p_less(threshold - d) <= reject_alpha / 2:  # confidently short of min_effect
        verdict = "same"
        reasons.append(
            "real gain but below min_effect" if p_better <= half else "no gain of min_effect"
        )
    elif final:
        verdict, exhausted = "same", True
        reasons.append("budget exhausted before a confident answer")
    else:
        verdict = "unsure"
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

    Decides only at scheduled looks (see `looks`); between them it asks for more rounds, so
    a harness taking smaller batches cannot spend alpha on unplanned looks.
    """
    rounds = min((len(v) for v in candidate.values()), default=0)
    rounds = min(rounds, min((len(v) for v in reference.values()), default=0))
    if rounds >= acceptance.max_rounds or elapsed_seconds >= acceptance.max_seconds:
        return False
    if rounds < acceptance.min_rounds or rounds != next_look(rounds, acceptance):
        return True
    overall = compare(
        _overall_series(candidate, primary),
        _overall_series(reference, primary),
        acceptance,
        lower_is_better,
    )
    return overall.verdict == "unsure"


def decide(
    samples: dict[str, dict[str, list[float]]],
    reference: str,
    acceptance: Acceptance,
    lower_is_better: bool = True,
    *,
    candidate: str = "candidate",
    primary: str | None = None,
    final: bool = True,
) -> Decision:
    """Judge a finished EvalResult's samples[case][impl] against one reference impl.

    Overall uses per-round suite totals (or the primary case); per-case verdicts share
    alpha across cases. `final` defaults to True: eval.py only stops when the sequential
    rule is done or the budget ran out, so anything still unsure is a reject.
    """
    cand = {case: impls[candidate] for case, impls in samples.items()
            if candidate in impls and reference in impls}
    ref = {case: samples[case][reference] for case in cand}
    overall = compare(_overall_series(cand, primary), _overall_series(ref, primary),
                      acceptance, lower_is_better, final=final)
    cases = {
        case: compare(cand[case], ref[case], acceptance, lower_is_better, final=final,
                      family=len(cand))
        for case in cand
    }
    return Decision(reference=reference, overall=overall, cases=cases)
