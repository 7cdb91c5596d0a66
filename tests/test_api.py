"""The Python API: a callable metric runs in a sandboxed child, never in the loop's process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakeservers import FakeModelServer
from generic_helpers import calc_reply, calc_value, git, make_repo

from ratchetloop import Loop
from ratchetloop.errors import RatchetError
from ratchetloop.metrics import CompositeMetric, LatencyMetric, LLMJudge
from ratchetloop.proposers.openai import OpenAIProposer
from ratchetloop.proposers.replay import ReplayProposer


@pytest.fixture(autouse=True)
def private_bench_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic metrics need no host-wide timing lock; don't queue behind benchmarks."""
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))


class Judge:
    """Stands in for LLMJudge: in-process, sees the file, never runs it."""

    in_process = True

    def __call__(self, target: str) -> float:
        return 1.0 if "return" in Path(target).read_text() else 0.0


def test_loop_with_callable_metric(tmp_path):
    repo = make_repo(tmp_path)
    replies = [calc_reply(6, "six"), calc_reply(30, "thirty"), calc_reply(2, "two")]
    loop = Loop(target=str(repo / "calc.py"), metric=calc_value, directives="Lower cost().",
                proposer=ReplayProposer(replies), higher_is_better=False)
    result = loop.run(iterations=3)
    assert result.seed_metric == 10 and result.best_metric == 2
    assert [h["status"] for h in result.history] == ["keep", "discard", "keep"]
    assert result.branch == "ratchet/calc" and result.best_commit
    assert "return 2" in git(repo, "show", f"{result.best_commit}:calc.py")
    assert (result.folder / "program.md").read_text() == "Lower cost().\n"
    assert "return base" in (repo / "calc.py").read_text()  # user's file untouched


def test_composite_mixes_sandboxed_and_in_process_parts(tmp_path):
    repo = make_repo(tmp_path)
    metric = CompositeMetric([(calc_value, -1.0), (Judge(), 100.0)])
    loop = Loop(target=str(repo / "calc.py"), metric=metric, proposer=ReplayProposer(
        [calc_reply(4, "four")]), higher_is_better=True, tag="mix")
    result = loop.run(iterations=1)
    assert result.seed_metric == 90 and result.best_metric == 96


def test_lambda_metric_is_refused_with_a_reason(tmp_path):
    repo = make_repo(tmp_path)
    loop = Loop(target=str(repo / "calc.py"), metric=lambda p: 1.0,
                proposer=ReplayProposer([]))
    with pytest.raises(RatchetError, match="picklable by reference"):
        loop.run(iterations=1)


def test_run_refuses_inside_the_metric_child(tmp_path, monkeypatch):
    repo = make_repo(tmp_path)
    monkeypatch.setenv("RATCHET_METRIC_CHILD", "1")
    with pytest.raises(RatchetError, match="__main__"):
        Loop(target=str(repo / "calc.py"), metric="python3 score.py").run(1)


FORGE_IN_CHILD = """import json
import os

print(json.dumps({"ratchet_metric": 0}))  # the old stdout protocol: ignored now
for fd in (3, int(os.environ.get("RATCHET_RESULT_FD", "3"))):
    try:
        os.write(fd, b"0\\n")  # the channel was moved away before the metric ran
    except OSError:
        pass


def cost():
    return 10
"""


def test_callable_metric_reports_on_the_channel_so_candidate_output_cannot_forge_it(tmp_path):
    repo = make_repo(tmp_path)
    forger = f"File: calc.py\n```python\n{FORGE_IN_CHILD}```\nNote: forge\n"
    loop = Loop(target=str(repo / "calc.py"), metric=calc_value, higher_is_better=False,
                proposer=ReplayProposer([forger, calc_reply(2, "two")]))
    result = loop.run(iterations=2)
    assert [h["status"] for h in result.history] == ["discard", "keep"]
    assert result.best_metric == 2
    data = json.loads((result.folder / "experiment.json").read_text())
    assert data["generic"]["metric"]["channel"] == "fd"


def test_loop_check_blocks_a_winner_that_breaks_the_tests(tmp_path):
    repo = make_repo(tmp_path)
    loop = Loop(target=str(repo / "calc.py"), metric="python3 score.py",
                metric_regex=r"cost=(\d+)", higher_is_better=False,
                check="python3 -c 'from calc import cost; assert cost() > 0, \"not positive\"'",
                proposer=ReplayProposer([calc_reply(0, "zero"), calc_reply(3, "three")]))
    result = loop.run(iterations=2)
    assert [h["status"] for h in result.history] == ["discard", "keep"]
    assert "[check:" in result.history[0]["description"] and result.best_metric == 3


def test_command_number_reads_its_own_result_channel_first(tmp_path):
    from ratchetloop.metrics import CommandNumber

    target = tmp_path / "t.txt"
    target.write_text("x")
    to_fd = 'echo 0.25 >&"$RATCHET_RESULT_FD"; echo "acc=0.99"'
    assert CommandNumber(to_fd, pattern=r"acc=(\S+)")(str(target)) == 0.25  # stdout ignored
    assert CommandNumber('echo "acc=0.5"', pattern=r"acc=(\S+)")(str(target)) == 0.5
    twice = 'echo 1 >&"$RATCHET_RESULT_FD"; echo 2 >&"$RATCHET_RESULT_FD"'
    with pytest.raises(RuntimeError, match="2 values"):
        CommandNumber(twice)(str(target))


def test_loop_takes_the_direction_from_the_metric(tmp_path):
    repo = make_repo(tmp_path)
    target = str(repo / "calc.py")
    latency = LatencyMetric("python3 score.py", runs=1, warmup=0)
    loop = Loop(target=target, metric=latency, proposer=ReplayProposer([]))
    assert loop.higher_is_better is False  # a latency is minimised, not maximised
    loop.run(iterations=0)
    contract = json.loads((loop.repo / ".ratchet" / "calc" / "experiment.json").read_text())
    assert contract["direction"] == "lower_is_better"
    assert Loop(target=target, metric=LLMJudge("r", "m")).higher_is_better is True
    assert Loop(target=target, metric=calc_value).higher_is_better is True  # undeclared
    assert Loop(target=target, metric=calc_value, higher_is_better=False).higher_is_better is False
    assert Loop(target=target, metric=latency, higher_is_better=False).higher_is_better is False
    with pytest.raises(RatchetError, match="LatencyMetric is lower is better"):
        Loop(target=target, metric=latency, higher_is_better=True)


def judged_loop(root: Path, judge: LLMJudge, tag: str) -> Loop:
    root.mkdir()
    replies = [calc_reply(n, f"return {n}") for n in range(1, 6)]
    return Loop(target=str(make_repo(root) / "calc.py"), metric=judge, tag=tag,
                proposer=ReplayProposer(replies))


def test_llm_judge_spending_counts_in_the_run_and_is_held_to_its_budget(tmp_path):
    with FakeModelServer(default_text="5") as srv:  # each reply: 100 prompt + 20 completion
        model = OpenAIProposer("judge", base_url=srv.openai_base_url, local=True,
                               max_tokens=50, key_var=None)
        result = judged_loop(tmp_path / "a", LLMJudge("Rate.", model), "a").run(iterations=1)
        judged = len(srv.posts())
        limited = judged_loop(tmp_path / "b", LLMJudge("Rate.", model), "b").run(
            iterations=5, max_tokens=1000)
        more = len(srv.posts()) - judged
    usage = json.loads((result.folder / "SCORES.json").read_text())["usage"]
    assert judged >= 9  # the seed's rounds, then candidate and incumbent
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (100 * judged, 20 * judged)
    assert limited.stop_reason.startswith("token budget 1000 would be exceeded")
    assert 0 < more and 120 * more <= 1000  # every judge request was held to the budget
    assert limited.usage is not None and limited.usage.total_tokens == 120 * more
