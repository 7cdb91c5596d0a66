"""Paired timing statistics and the acceptance decision.

eval.py returns, per case, per-round samples of the candidate and of each reference, timed
interleaved in one process. Everything here works on paired log-ratios
log(candidate_i / reference_i): host drift that hits both sides of a round cancels out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats

from .experiment import Acceptance

Verdict = Literal["better", "worse", "same", "unsure"]


@dataclass
class Comparison:
    verdict: Verdict
    ratio: float  # candidate / reference, geometric mean over rounds
    ci_low: float
    ci_high: float
    p_value: float
    rounds: int
    candidate_median: float
    reference_median: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def speedup(self) -> float:
        """How many times better the candidate is (>1 means better), direction-aware."""
        return 1.0 / self.ratio if self.ratio > 0 else math.inf


def compare(
    candidate: list[float],
    reference: list[float],
    acceptance: Acceptance,
    lower_is_better: bool = True,
) -> Comparison:
    """Decide on paired samples: better only if significant AND at least min_effect."""
    c = np.asarray(candidate, dtype=float)
    r = np.asarray(reference, dtype=float)
    n = min(len(c), len(r))
    c, r = c[:n], r[:n]
    if n < 3 or np.any(c <= 0) or np.any(r <= 0):
        med_c = float(np.median(c)) if n else math.nan
        med_r = float(np.median(r)) if n else math.nan
        return Comparison("unsure", math.nan, math.nan, math.nan, 1.0, n, med_c, med_r)
    d = np.log(c / r)
    if not lower_is_better:
        d = -d
    mean = float(np.mean(d))
    sd = float(np.std(d, ddof=1))
    alpha = 1.0 - acceptance.confidence
    if sd == 0.0:
        low = high = mean
        p = 0.0 if mean != 0 else 1.0
    else:
        se = sd / math.sqrt(n)
        tcrit = float(stats.t.ppf(1 - alpha / 2, n - 1))
        low, high = mean - tcrit * se, mean + tcrit * se
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    threshold = math.log(1.0 - acceptance.min_effect) if acceptance.min_effect > 0 else 0.0
    if high < 0 and mean <= threshold:
        verdict: Verdict = "better"
    elif low > 0:
        verdict = "worse"
    elif high < 0 or low > threshold:
        verdict = "same"  # cannot reach the minimum effect, or real but too small
    else:
        verdict = "unsure"
    sign = 1.0 if lower_is_better else -1.0
    return Comparison(
        verdict=verdict,
        ratio=math.exp(sign * mean),
        ci_low=math.exp(sign * (low if lower_is_better else high)),
        ci_high=math.exp(sign * (high if lower_is_better else low)),
        p_value=p,
        rounds=n,
        candidate_median=float(np.median(c)),
        reference_median=float(np.median(r)),
    )


def suite_totals(samples: dict[str, list[float]]) -> list[float]:
    """Per-round total over cases: the overall full-suite time of each round."""
    series = list(samples.values())
    if not series:
        return []
    n = min(len(s) for s in series)
    return [float(sum(s[i] for s in series)) for i in range(n)]


def needs_more_rounds(
    candidate: dict[str, list[float]],
    reference: dict[str, list[float]],
    acceptance: Acceptance,
    lower_is_better: bool,
    elapsed_seconds: float,
) -> bool:
    """Sequential sampling: keep measuring while the overall answer is unsure and budget lasts."""
    rounds = min((len(v) for v in candidate.values()), default=0)
    if rounds < acceptance.min_rounds:
        return True
    if rounds >= acceptance.max_rounds or elapsed_seconds >= acceptance.max_seconds:
        return False
    overall = compare(
        suite_totals(candidate), suite_totals(reference), acceptance, lower_is_better
    )
    return overall.verdict == "unsure"
