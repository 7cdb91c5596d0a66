"""The acceptance decision on fixed samples: each verdict, the budget, outliers, alpha."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ratchetloop.experiment import Acceptance
from ratchetloop.measure import (
    _signed_rank_cdf,
    compare,
    decide,
    hodges_lehmann,
    look_alpha,
    looks,
    needs_more_rounds,
    next_look,
)

ACC = Acceptance()  # the defaults are what these tests vouch for


def paired(effect: float, noise: float, n: int, seed: int = 0) -> tuple[list[float], list[float]]:
    """Reference ~100us; candidate (1-effect) times it; multiplicative per-round noise."""
    rng = np.random.default_rng(seed)
    ref = 100.0 * np.exp(rng.normal(0, noise, n))
    cand = 100.0 * (1 - effect) * np.exp(rng.normal(0, noise, n))
    return cand.tolist(), ref.tolist()


def test_clear_win_is_better_with_ratio_and_interval() -> None:
    cand, ref = paired(0.10, 0.01, 16)
    c = compare(cand, ref, ACC)
    assert c.verdict == "better" and c.accepted
    assert c.ci_low <= c.ratio <= c.ci_high < 1.0
    assert c.ratio == pytest.approx(0.90, abs=0.01)
    assert c.speedup == pytest.approx(1 / c.ratio)
    assert c.p_value < c.alpha / 2 and c.rounds == 16


def test_clear_loss_is_worse() -> None:
    cand, ref = paired(-0.10, 0.01, 16)
    c = compare(cand, ref, ACC)
    assert c.verdict == "worse" and c.ratio > 1.05 and c.p_value > 0.99


def test_higher_is_better_flips_the_direction() -> None:
    cand, ref = paired(-0.10, 0.01, 16)  # candidate scores 10% higher
    c = compare(cand, ref, ACC, lower_is_better=False)
    assert c.verdict == "better" and c.ratio > 1.05 and c.speedup > 1.05


def test_close_call_is_unsure_then_more_rounds_are_requested() -> None:
    cand, ref = paired(0.02, 0.05, 16, seed=3)
    c = compare(cand, ref, ACC)
    assert c.verdict == "unsure" and not c.exhausted
    assert needs_more_rounds({"k": cand}, {"k": ref}, ACC, True, elapsed_seconds=1.0)


def test_budget_exhausted_rejects_what_is_still_unsure() -> None:
    cand, ref = paired(0.02, 0.05, 16, seed=3)
    assert not needs_more_rounds({"k": cand}, {"k": ref}, ACC, True,
                                 elapsed_seconds=ACC.max_seconds)
    final = compare(cand, ref, ACC, final=True)
    assert final.verdict == "same" and final.exhausted and not final.accepted
    assert "budget" in final.reasons[0]


def test_max_rounds_stops_sampling() -> None:
    cand, ref = paired(0.0, 0.05, ACC.max_rounds, seed=1)
    assert not needs_more_rounds({"k": cand}, {"k": ref}, ACC, True, 0.0)


def test_same_code_is_never_accepted_and_ends_same() -> None:
    for seed in range(20):
        cand, ref = paired(0.0, 0.02, ACC.max_rounds, seed=seed)
        c = compare(cand, ref, ACC, final=True)
        assert c.verdict == "same", (seed, c.summary())


def test_identical_timings_are_same_not_an_error() -> None:
    c = compare([5.0] * 20, [5.0] * 20, ACC, final=True)
    assert c.verdict == "same" and c.ratio == 1.0 and c.p_value == 1.0


def test_real_gain_smaller_than_min_effect_is_same() -> None:
    acc = Acceptance(min_effect=0.05)
    cand, ref = paired(0.02, 0.002, 24)
    c = compare(cand, ref, acc)
    assert c.verdict == "same" and c.ci_high < 1.0  # significant, but not worth keeping
    assert "below min_effect" in c.reasons[0]


def test_one_descheduled_round_does_not_flip_a_win() -> None:
    cand, ref = paired(0.05, 0.01, 24, seed=2)
    cand[5] *= 30.0  # a context switch in the middle of one candidate sample
    c = compare(cand, ref, ACC)
    assert c.verdict == "better"
    assert c.ratio == pytest.approx(0.95, abs=0.01)
    # The mean-based interval would have been dragged far off by that round.
    d = np.log(np.asarray(cand) / np.asarray(ref))
    assert math.exp(d.mean()) > 1.0


def test_outliers_on_the_reference_side_do_not_fake_a_win() -> None:
    cand, ref = paired(0.0, 0.01, 48, seed=4)
    for i in (3, 17, 30):
        ref[i] *= 20.0  # three rounds where only the reference was interrupted
    c = compare(cand, ref, ACC, final=True)
    assert c.verdict != "better" and c.ratio == pytest.approx(1.0, abs=0.01)


def test_too_few_or_bad_samples_are_unsure_never_better() -> None:
    assert compare([1.0, 1.0], [2.0, 2.0], ACC).verdict == "unsure"
    assert compare([1.0] * 10 + [0.0], [2.0] * 11, ACC).verdict == "unsure"
    assert compare([1.0, 1.0], [2.0, 2.0], ACC, final=True).verdict == "same"


def test_below_min_rounds_is_unsure_even_when_obvious() -> None:
    cand, ref = paired(0.5, 0.001, ACC.min_rounds - 1)
    assert compare(cand, ref, ACC).verdict == "unsure"


def test_alpha_is_spent_across_looks_and_sums_to_the_budget() -> None:
    points = looks(ACC)
    assert points[0] == ACC.min_rounds and points[-1] == ACC.max_rounds
    per_look = [look_alpha(n, ACC) for n in points]
    assert sum(per_look) == pytest.approx(1 - ACC.confidence)
    assert per_look == sorted(per_look)  # the last look gets the most
    # Between looks is charged to the next look, so no share is used twice.
    assert look_alpha(points[1] + 1, ACC) == look_alpha(points[2], ACC)
    assert next_look(points[1] + 1, ACC) == points[2]


def test_looks_follow_the_harness_batches() -> None:
    acc = Acceptance(min_rounds=10, batch_rounds=8, max_rounds=40)
    assert looks(acc) == [16, 24, 32, 40]
    # Between looks the rule never decides; it asks for the rest of the batch.
    cand, ref = paired(0.5, 0.001, 20)
    assert needs_more_rounds({"k": cand}, {"k": ref}, acc, True, 0.0)
    assert not needs_more_rounds({"k": cand[:16]}, {"k": ref[:16]}, acc, True, 0.0)


def test_signed_rank_distribution_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    for n in (5, 12, 30):
        d = rng.normal(0.1, 1, n)
        t_plus = int(np.sum(stats.rankdata(np.abs(d))[d > 0]))
        exact = stats.wilcoxon(d, alternative="less", method="exact").pvalue
        assert _signed_rank_cdf(n)[t_plus] == pytest.approx(exact)


def test_hodges_lehmann_interval_covers_at_its_level() -> None:
    rng = np.random.default_rng(11)
    covered = sum(
        lo <= 0.0 <= hi
        for lo, hi in (hodges_lehmann(rng.standard_t(2, 15), 0.2)[1:] for _ in range(2000))
    )
    assert covered / 2000 >= 0.78  # 80% nominal, exact up to discreteness and MC error


def test_decide_overall_and_per_case() -> None:
    fast_c, fast_r = paired(0.10, 0.01, 24, seed=1)
    same_c, same_r = paired(0.0, 0.01, 24, seed=2)
    samples = {
        "big": {"candidate": fast_c, "best": fast_r, "seed": fast_r},
        "small": {"candidate": [x / 100 for x in same_c], "best": [x / 100 for x in same_r]},
    }
    dec = decide(samples, "best", ACC)
    assert dec.verdict == "better"  # suite total is dominated by the big case
    assert dec.better_cases == ["big"]
    assert dec.cases["small"].verdict in {"same", "unsure"} or dec.cases["small"].exhausted
    assert dec.cases["big"].alpha == pytest.approx(dec.overall.alpha / 2)  # shared by cases
    assert dec.to_dict()["overall"]["verdict"] == "better"
    primary = decide(samples, "best", ACC, primary="small")
    assert primary.verdict == "same"


def test_sequential_looks_do_not_leak_false_accepts_on_heavy_tailed_aa_noise() -> None:
    """A/A through the harness's look pattern (the rates are in bench_acceptance.py)."""
    acc = Acceptance(max_rounds=32, confidence=0.9)  # a generous level, so a leak would show
    rng = np.random.default_rng(2024)
    accepts = 0
    for _ in range(100):
        noise = rng.standard_t(2, acc.max_rounds) * 0.03  # heavy tails like a busy host
        cand = list(100 * np.exp(noise))
        ref = [100.0] * acc.max_rounds
        n = next(k for k in looks(acc)
                 if not needs_more_rounds({"k": cand[:k]}, {"k": ref[:k]}, acc, True, 0.0))
        accepts += compare(cand[:n], ref[:n], acc, final=True).accepted
    # The union bound promises a rate <= alpha/2 = 5% however the looks fall (an 800-trial
    # run of this setup gave 2.75%); seeded, so this is deterministic: 5 of 100 here.
    assert accepts <= 7
