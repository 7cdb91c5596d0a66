"""The drift check (loop.maybe_check_drift) in real runs: every `drift_every` iterations,
once a winner exists, the best is re-measured against the seed; SCORES.json keeps the
measurement and SCORES.md shows the latest.

Two modes: the fib experiment (eval.py in the sandbox, timings, so ratios are checked against
the recorded best and seed within timing noise) and a generic project whose metric is a
printed number (so the ratio is exact)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ITERATIVE, reply
from generic_helpers import calc_reply, make_repo

from ratchetloop import experiment as experiment_mod
from ratchetloop.fmt import times
from ratchetloop.generic import session_parts
from ratchetloop.generic.contract import MetricSpec
from ratchetloop.generic.init import init_project
from ratchetloop.loop import Options, QuietReporter, run_loop
from ratchetloop.proposers.replay import ReplayProposer


def drift_line(entry: dict) -> str:
    """SCORES.md's drift line for a lower-is-better experiment, from its SCORES.json entry."""
    return (f"- drift check (iteration {entry['iteration']}): best vs seed measured now,"
            f" {times(1 / entry['ratio'])} better")


def test_fib_best_is_remeasured_against_the_seed_every_second_iteration(
        exp_repo, state_reader) -> None:
    folder = exp_repo("fib", cases=["fib18"])
    exp = experiment_mod.load(folder)
    replies = [reply(ITERATIVE, "iterate"), "no code", "no code again", "still no code"]
    summary = run_loop(exp, ReplayProposer(replies), Options(iterations=4, drift_every=2))
    assert [o.status for o in summary.outcomes] == ["accepted_best", "failed", "failed",
                                                    "failed"]
    sc = state_reader(folder)
    assert [d["iteration"] for d in sc["drift"]] == [2, 4]
    recorded = summary.best.score / summary.seed.score  # a ~22-step loop vs ~6000 calls
    for d in sc["drift"]:
        low, high = d["ci"]
        assert low <= d["ratio"] <= high
        # the same two sources, timed again: the same order of magnitude, far below 1
        assert recorded / 4 < d["ratio"] < recorded * 4, (d["ratio"], recorded)
    md = (folder / "SCORES.md").read_text()
    assert drift_line(sc["drift"][-1]) in md
    assert "(iteration 2)" not in md  # only the latest is shown


def test_fib_without_a_winner_measures_no_drift(exp_repo, state_reader) -> None:
    folder = exp_repo("fib", cases=["fib18"])
    exp = experiment_mod.load(folder)
    run_loop(exp, ReplayProposer(["no code", "none either"]),
             Options(iterations=2, drift_every=1))
    sc = state_reader(folder)
    assert sc["drift"] == []
    assert "- drift check (" not in (folder / "SCORES.md").read_text()


@pytest.fixture(autouse=True)
def private_bench_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))


def generic_project(tmp_path: Path) -> experiment_mod.Experiment:
    """calc.py returns 10; score.py prints `cost=<value> units`; lower is better."""
    repo = make_repo(tmp_path)
    folder = init_project(repo, tag="calc", editable=["calc.py"], readonly=["score.py"],
                          run_command="python3 score.py",
                          metric=MetricSpec(kind="regex", pattern=r"cost=(\d+)"))
    return experiment_mod.load(folder)


def run_generic(exp: experiment_mod.Experiment, replies: list[str], n: int,
                drift_every: int) -> list[str]:
    reporter, workspace = session_parts(exp, QuietReporter())
    proposer = ReplayProposer(replies)
    summary = run_loop(exp, proposer, Options(iterations=n, drift_every=drift_every),
                       reporter, workspace)
    return [o.status for o in summary.outcomes]


def test_generic_drift_is_the_exact_metric_ratio_and_follows_attempt_numbers(
        tmp_path: Path) -> None:
    exp = generic_project(tmp_path)
    replies = [calc_reply(40, "forty"), calc_reply(5, "five"), calc_reply(30, "thirty")]
    statuses = run_generic(exp, replies, 3, drift_every=2)
    assert statuses == ["rejected", "accepted_best", "rejected"]
    sc = json.loads(exp.path("SCORES.json").read_text())
    assert [(d["iteration"], d["ratio"]) for d in sc["drift"]] == [(2, 0.5)]  # 5 / 10
    assert drift_line(sc["drift"][0]) == "- drift check (iteration 2): best vs seed measured" \
                                         " now, x2.000 better"
    assert drift_line(sc["drift"][0]) in exp.path("SCORES.md").read_text()
    # a second run numbers on from 4: its drift check falls on attempt 4, not on its own 2nd
    statuses = run_generic(exp, [calc_reply(50, "fifty")], 1, drift_every=2)
    assert statuses == ["rejected"]
    sc = json.loads(exp.path("SCORES.json").read_text())
    assert [(d["iteration"], d["ratio"]) for d in sc["drift"]] == [(2, 0.5), (4, 0.5)]


def test_generic_prompt_shows_the_metric_rounded(tmp_path: Path) -> None:
    """The model reads the same six significant digits as results.tsv, not a float's repr."""
    exp = generic_project(tmp_path)
    run_generic(exp, [calc_reply(5, "five"), calc_reply(7, "seven")], 2, drift_every=0)
    sc = json.loads(exp.path("SCORES.json").read_text())
    sc["seed"]["score"] = 4456.907499999999  # a median of timings as it comes out
    exp.path("SCORES.json").write_text(json.dumps(sc))
    reporter, workspace = session_parts(exp, QuietReporter())
    proposer = ReplayProposer(["no code"])
    run_loop(exp, proposer, Options(iterations=1, drift_every=0), reporter, workspace)
    assert "lower is better. Current best 5 (baseline 4456.91).\n" in proposer.prompts[0]
