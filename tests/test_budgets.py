"""Stop conditions: budgets stop before the next request would cross them; patience."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import NAIVE, reply, run_ratchet
from fakeservers import FakeModelServer, Reply
from generic_helpers import calc_reply, make_repo

from ratchetloop import Loop
from ratchetloop import experiment as experiment_mod
from ratchetloop.budget import Budget, BudgetExceeded
from ratchetloop.loop import Options, Summary, run_loop
from ratchetloop.proposers.openai import OpenAIProposer
from ratchetloop.proposers.registry import resolve
from ratchetloop.proposers.replay import ReplayProposer
from ratchetloop.proposers.retry import RetryPolicy


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


# ------------------------------------------------- hard budgets, held where requests leave


def compatible(srv: FakeModelServer, exp, **kw):
    """An OpenAI-compatible proposer on the fake server, through the registry."""
    proposer = resolve(f"openai-compatible:m@{srv.openai_base_url}", exp, **kw)
    proposer.retry = RetryPolicy(max_attempts=2, sleep=lambda s: None)
    return proposer


def test_the_first_request_is_checked_and_not_sent_when_it_could_cross(fib: Path) -> None:
    with FakeModelServer([reply(NAIVE, "same as seed")] * 3) as srv:
        exp = experiment_mod.load(fib)
        summary = run_loop(exp, compatible(srv, exp, max_tokens=1000),
                           Options(iterations=3, drift_every=0, max_tokens=900))
        posts = srv.posts()
    assert posts == [] and summary.outcomes == []
    assert summary.stop_reason.startswith(
        "token budget 900 would be exceeded by the next request (estimate ")
    assert "+ 1000 completion" in summary.stop_reason  # the reply is counted at max_tokens
    assert json.loads((fib / "SCORES.json").read_text())["usage"]["prompt_tokens"] == 0
    refused = json.loads((fib / "runs" / "0001" / "budget.json").read_text())
    assert refused["estimate"]["completion_tokens"] == 1000


def test_ratchet_run_max_cost_prices_the_reply_at_max_output_tokens(exp_repo) -> None:
    """Through the CLI: $10/MTok output, 4000 output tokens allowed -> $0.04 > $0.01."""
    folder = exp_repo("fib", tweaks={"prices": {"m": {"input": 1.0, "output": 10.0}}})
    with FakeModelServer([reply(NAIVE, "same as seed")] * 3) as srv:
        proc = run_ratchet("run", str(folder), "--model", f"openai-compatible:m@"
                           f"{srv.openai_base_url}", "--loop", "3", "--max-cost", "0.01",
                           "--max-output-tokens", "4000", cwd=folder.parents[1])
        posts = srv.posts()
    assert proc.returncode == 0, proc.stderr
    assert posts == []  # each reply costs $0.0003, but could have cost $0.04
    assert "cost budget $0.0100 would be exceeded by the next request" in proc.stdout
    refused = json.loads((folder / "runs" / "0001" / "budget.json").read_text())
    assert "(estimate $0.04" in refused["refused"]
    assert refused["estimate"]["cost_usd"] == pytest.approx(0.04, rel=0.05)


def test_a_failed_request_still_counts_what_it_was_billed(fib: Path) -> None:
    """A 200 whose body cannot be read was billed: its usage block is counted."""
    body = {"choices": [], "usage": {"prompt_tokens": 700, "completion_tokens": 30}}
    with FakeModelServer([Reply(body=body)]) as srv:
        exp = experiment_mod.load(fib)
        summary = run_loop(exp, compatible(srv, exp), Options(iterations=1, drift_every=0))
    assert summary.outcomes[0].failure_kind == "malformed_response"
    usage = json.loads((fib / "SCORES.json").read_text())["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (700, 30)
    recorded = json.loads((fib / "runs" / "0001" / "usage.json").read_text())
    assert recorded["prompt_tokens"] == 700


def test_a_retry_is_checked_and_a_timed_out_request_counts_as_spent() -> None:
    """The first attempt times out (perhaps billed): its estimate stays counted, so the
    retry, which would fit on its own, is not sent."""
    with FakeModelServer([Reply(hang=True), Reply(text="ok")]) as srv:
        p = OpenAIProposer("m", base_url=srv.openai_base_url, local=True, max_tokens=1000,
                           key_var=None, timeout=0.2,
                           retry=RetryPolicy(max_attempts=3, sleep=lambda s: None))
        p.budget = Budget(max_tokens=1500)
        with pytest.raises(BudgetExceeded, match="by timed-out or unfinished requests") as info:
            p.propose("x")
        assert len(srv.posts()) == 1
    assert info.value.kind == "budget" and info.value.estimate.completion_tokens == 1000


def test_a_cost_budget_refuses_a_request_whose_price_is_unknown() -> None:
    with FakeModelServer(["ok"]) as srv:
        p = OpenAIProposer("mystery-model-7", api_key="sk-x", base_url=srv.openai_base_url,
                           retry=RetryPolicy(max_attempts=1))
        p.budget = Budget(max_cost=5.0)
        with pytest.raises(BudgetExceeded, match="price of mystery-model-7 is unknown"):
            p.propose("x")
        p.budget = Budget(max_tokens=100_000)  # a token budget alone needs no price
        assert p.propose("x").text == "ok"
        assert len(srv.posts()) == 1


def test_a_generic_fix_request_is_held_to_the_budget(tmp_path: Path) -> None:
    """Generic mode asks the model to fix a crash through the same proposer: once the
    first reply's usage leaves too little room, the fix is not requested; the crash is
    recorded as usual and the run stops with the reason."""
    repo = make_repo(tmp_path)
    crash = calc_reply(1, "boom", extra="    raise RuntimeError('boom')\n")
    spent = {"prompt_tokens": 3000, "completion_tokens": 1000}
    with FakeModelServer([Reply(text=crash, usage=spent), calc_reply(2, "fixed")]) as srv:
        proposer = OpenAIProposer("m", base_url=srv.openai_base_url, local=True,
                                  max_tokens=5000, key_var=None,
                                  retry=RetryPolicy(max_attempts=1))
        loop = Loop(target=str(repo / "calc.py"), metric="python3 score.py",
                    metric_regex=r"cost=(\d+)", higher_is_better=False, proposer=proposer)
        result = loop.run(iterations=3, max_tokens=9000)
        posts = srv.posts()
    assert len(posts) == 1  # the fix (about 6000 more at most) was not sent
    assert result.stop_reason.startswith("token budget 9000 would be exceeded")
    runs = result.folder / "runs" / "0001"
    assert (runs / "fix1.prompt.md").is_file() and not (runs / "fix1.reply.md").exists()
    assert json.loads((runs / "attempt.json").read_text())["status"] == "failed"
    assert result.usage is not None and result.usage.total_tokens == 4000
