"""The Python API: a callable metric runs in a sandboxed child, never in the loop's process."""

from __future__ import annotations

from pathlib import Path

import pytest
from generic_helpers import calc_reply, calc_value, git, make_repo

from ratchetloop import Loop
from ratchetloop.errors import RatchetError
from ratchetloop.metrics import CompositeMetric
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
