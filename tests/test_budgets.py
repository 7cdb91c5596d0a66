"""Stop conditions: budgets stop before the next request would cross them; patience."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import NAIVE, reply

from ratchetloop import experiment as experiment_mod
from ratchetloop.loop import Options, Summary, run_loop
from ratchetloop.proposers.replay import ReplayProposer


def run(folder: Path, usage: dict, **options) -> Summary:
    # The naive seed again: a duplicate, so each iteration costs a request but no evaluation.
    replies = [{"text": reply(NAIVE, "same as seed"), "usage": usage} for _ in range(6)]
    exp = experiment_mod.load(folder)
    return run_loop(exp, ReplayProposer(replies), Options(iterations=6, drift_every=0, **options))


def test_token_budget_stops_before_the_request_that_would_cross_it(fib: Path) -> None:
    summary = run(fib, {"prompt_tokens": 1000, "completion_tokens": 500}, max_tokens=3500)
    assert len(summary.outcomes) == 2  # 3000 used; a third would reach 4500
    assert "token budget 3500" in summary.stop_reason
    usage = json.loads((fib / "SCORES.json").read_text())["usage"]
    assert usage["prompt_tokens"] == 2000 and usage["completion_tokens"] == 1000


def test_cost_budget_stops_before_the_request_that_would_cross_it(fib: Path) -> None:
    summary = run(fib, {"prompt_tokens": 10, "cost_usd": 0.4}, max_cost=1.0)
    assert len(summary.outcomes) == 2 and "cost budget $1.0000" in summary.stop_reason
    assert "estimated cost $0.800000" in (fib / "SCORES.md").read_text()


def test_patience_stops_after_k_iterations_without_a_win(fib: Path) -> None:
    summary = run(fib, {}, patience=3)
    assert [o.status for o in summary.outcomes] == ["duplicate"] * 3
    assert summary.stop_reason == "no improvement in 3 iterations"


def test_unknown_price_reads_unknown_never_zero(fib: Path) -> None:
    run(fib, {"prompt_tokens": 10, "completion_tokens": 5, "cost_usd": None}, patience=1)
    md = (fib / "SCORES.md").read_text()
    assert "estimated cost unknown" in md and "$0.000000" not in md
