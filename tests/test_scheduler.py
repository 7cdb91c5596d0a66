"""--parallel K and pipelining (scheduler.py): overlap that is real, and a record that is whole.

Each test makes the overlap it claims certain with threading primitives, never with sleeps:
a barrier that only K requests at once can pass, an evaluation that waits for the next
request to arrive. Evaluations are real (fib in the sandbox, through the host's evaluator).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ITERATIVE, git, reply, slow_fib, write_replay

from ratchetloop import experiment as experiment_mod
from ratchetloop import scheduler
from ratchetloop.budget import Budget, BudgetExceeded
from ratchetloop.cli import main
from ratchetloop.evaluate import EvalResult
from ratchetloop.loop import Options, run_loop
from ratchetloop.proposers.base import BaseProposer, Proposal, Usage
from ratchetloop.workspace import ExperimentFolder, LocalEvaluator

MEMO = ("def fib(n, _cache={0: 0, 1: 1}):\n    if n not in _cache:\n"
        "        _cache[n] = fib(n - 1) + fib(n - 2)\n    return _cache[n]\n")


class Scripted(BaseProposer):
    """Replies from a list, in call order; counts how many calls run at once."""

    name = "scripted"

    def __init__(self, replies: list[str], barrier: threading.Barrier | None = None,
                 *, parallel_safe: bool = True, remote: bool = False) -> None:
        self.replies, self.barrier = list(replies), barrier
        self.parallel_safe, self.remote = parallel_safe, remote
        self.lock = threading.Lock()
        self.active = self.most_at_once = self.calls = 0
        self.on_call: Any = None

    def propose(self, prompt: str) -> Proposal:
        with self.lock:
            self.active += 1
            self.calls += 1
            call = self.calls
            self.most_at_once = max(self.most_at_once, self.active)
            text = self.replies.pop(0)
        try:
            if self.on_call is not None:
                self.on_call(call)
            if self.barrier is not None and call <= self.barrier.parties:
                self.barrier.wait()
            return Proposal(text=text, usage=Usage(), model=self.name)
        finally:
            with self.lock:
                self.active -= 1


def attempts_on_disk(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/attempt.json"))]


def test_k_requests_are_in_flight_at_once_and_each_attempt_is_recorded_once(fib: Path) -> None:
    # four requests must all be out before any returns: only --parallel 4 passes the barrier
    proposer = Scripted([reply(slow_fib(k), f"burn {k}") for k in (4000, 2000, 1000, 500)],
                        threading.Barrier(4, timeout=30))
    summary = run_loop(experiment_mod.load(fib), proposer,
                       Options(iterations=4, parallel=4, drift_every=0))
    assert proposer.most_at_once == 4
    assert summary.stop_reason == "completed 4 iterations"
    records = attempts_on_disk(fib)
    assert sorted(r["iteration"] for r in records) == [1, 2, 3, 4]
    scores = json.loads((fib / "SCORES.json").read_text())
    assert scores["counts"]["attempts"] == 4
    accepts = git(fib.parents[1], "log", "--format=%s", "--grep=^Accept").splitlines()
    assert len(accepts) == sum(o.accepted for o in summary.outcomes) >= 1
    assert {r["commit"] for r in scores["rows"] if r["kind"] != "seed"} == {
        o.commit for o in summary.outcomes if o.accepted}


def test_a_proposer_that_is_not_parallel_safe_takes_turns(fib: Path) -> None:
    proposer = Scripted(["no code", "none here", "nor here"], parallel_safe=False)
    run_loop(experiment_mod.load(fib), proposer, Options(iterations=3, parallel=3,
                                                         drift_every=0))
    assert proposer.calls == 3 and proposer.most_at_once == 1


def test_the_same_code_twice_in_flight_is_evaluated_once(fib: Path) -> None:
    proposer = Scripted([reply(ITERATIVE, "first"), reply(ITERATIVE, "twin")],
                        threading.Barrier(2, timeout=30))
    summary = run_loop(experiment_mod.load(fib), proposer,
                       Options(iterations=2, parallel=2, drift_every=0))
    statuses = sorted(o.status for o in summary.outcomes)
    assert statuses == ["accepted_best", "duplicate"]
    twin = next(o for o in summary.outcomes if o.status == "duplicate")
    assert "in flight as attempt" in twin.message
    evaluated = [p for p in fib.glob("runs/*/result.json")]
    assert len(evaluated) == 1


class HandshakeEvaluator(LocalEvaluator):
    """The host's evaluator; its first candidate's evaluation (not the seed's baseline)
    waits until the next request arrives."""

    def __init__(self, patience: float) -> None:
        self.next_request = threading.Event()
        self.patience = patience
        self.waited: list[bool] = []

    def run(self, *args: Any, **kwargs: Any) -> EvalResult:
        if kwargs.get("keep_workdir") is not None and not self.waited:
            self.waited.append(self.next_request.wait(timeout=self.patience))
        return super().run(*args, **kwargs)


@pytest.mark.parametrize("pipeline", [True, False])
def test_pipelining_requests_the_next_proposal_while_one_is_evaluated(
        fib: Path, pipeline: bool) -> None:
    exp = experiment_mod.load(fib)
    # in turn, request 2 cannot come during evaluation 1 however long that waits for it
    evaluator = HandshakeEvaluator(patience=30 if pipeline else 0.5)
    proposer = Scripted([reply(ITERATIVE, "two-variable loop QX17"), reply(MEMO, "memo")],
                        remote=True)
    proposer.on_call = lambda call: call == 2 and evaluator.next_request.set()
    run_loop(exp, proposer, Options(iterations=2, pipeline=None if pipeline else False,
                                    drift_every=0),
             workspace=ExperimentFolder(exp, fib.parents[1], evaluator))
    # pipelined (the default for a remote proposer): request 2 went out during evaluation 1
    assert evaluator.waited == [pipeline]
    prompt_2 = (fib / "runs/0002/prompt.md").read_text()
    assert ("QX17" in prompt_2) is not pipeline  # the cost: prompt 2 knew nothing of 1


class TwoSlots(LocalEvaluator):
    """Two evaluations at once on this host (the bench lock still keeps their timing
    apart), as two Ray nodes would run them: both start before either is concluded."""

    slots = 2

    def __init__(self) -> None:
        self.started = threading.Barrier(2, timeout=30)
        self.calls = 0

    def run(self, *args: Any, **kwargs: Any) -> EvalResult:
        if kwargs.get("keep_workdir") is None:  # the seed's baseline
            return super().run(*args, **kwargs)
        self.calls += 1
        if self.calls <= 2:
            self.started.wait()
        return super().run(*args, **kwargs)


def test_a_win_timed_against_a_former_incumbent_is_timed_again(fib: Path) -> None:
    exp = experiment_mod.load(fib)
    evaluator = TwoSlots()
    proposer = Scripted([reply(slow_fib(4000), "slow"), reply(ITERATIVE, "fast")],
                        threading.Barrier(2, timeout=30))
    summary = run_loop(exp, proposer, Options(iterations=2, parallel=2, drift_every=0),
                       workspace=ExperimentFolder(exp, fib.parents[1], evaluator))
    first, second = summary.outcomes  # in the order they were concluded
    assert first.accepted and first.retimed == 0
    # the second was timed against the seed while the first won: a win there means nothing
    # until it is timed against the first
    assert second.retimed >= 1 and evaluator.calls == 2 + second.retimed
    assert second.retimed <= scheduler.RETIME
    if second.accepted:
        assert summary.best is not None and summary.best.commit == second.commit


def test_a_stop_condition_stops_new_requests_and_records_those_in_flight(fib: Path) -> None:
    proposer = Scripted(["no code", "no code either", "nor here", "never asked"],
                        threading.Barrier(3, timeout=30))
    summary = run_loop(experiment_mod.load(fib), proposer,
                       Options(iterations=4, parallel=3, patience=1, drift_every=0))
    assert summary.stop_reason == "no improvement in 1 iterations"
    assert proposer.calls == 3
    assert [r["status"] for r in attempts_on_disk(fib)] == ["failed"] * 3


def test_k_requests_cannot_overspend_together() -> None:
    budget = Budget(max_cost=1.0)
    estimate = Usage(prompt_tokens=10, cost_usd=0.6)
    other_checked, release = threading.Event(), threading.Event()

    def other_request() -> None:
        budget.check(estimate, "thread")
        other_checked.set()
        release.wait(timeout=30)
        budget.settle()

    worker = threading.Thread(target=other_request)
    worker.start()
    assert other_checked.wait(timeout=30)
    with pytest.raises(BudgetExceeded, match="unfinished requests"):
        budget.check(estimate, "main")  # 0.6 out there + 0.6 here > 1.0
    release.set()
    worker.join()
    budget.refusal = None
    budget.check(estimate, "main")  # settled without a bill: fits again


def test_cli_parallel_flag_runs_and_unknown_options_are_refused(fib: Path,
                                                                 tmp_path: Path) -> None:
    model = write_replay(tmp_path / "r.json", [reply(ITERATIVE, "iterate"), "no code"])
    result = CliRunner().invoke(main, ["--root", str(fib.parents[1]), "run", "fib", "--model",
                                       model, "--loop", "2", "--parallel", "2"])
    assert result.exit_code == 0, result.output
    assert len(attempts_on_disk(fib)) == 2
    # the plain progress lines count attempts done, whatever order they end in
    assert "[1/2]" in result.output and "[2/2]" in result.output
    with pytest.raises(TypeError, match="without an Options field"):
        Options.from_flags({"paralel": 2})
