"""Metric helpers, and reading a metric out of command output."""

from __future__ import annotations

import sys

import pytest
from fakeservers import FakeModelServer

from ratchetloop.generic.contract import MetricSpec, read_metric
from ratchetloop.metrics import CommandNumber, CompositeMetric, LatencyMetric, LLMJudge

PY = sys.executable


def test_read_metric_kinds():
    out = "epoch 3\nloss 0.25 acc=0.9\n{\"eval\": {\"acc\": 0.75}}\ndone in 12s\n"
    assert read_metric(out, MetricSpec()) == 12
    assert read_metric(out, MetricSpec(kind="regex", pattern=r"acc=(\S+)")) == 0.9
    assert read_metric(out, MetricSpec(kind="json_key", key="eval.acc")) == 0.75
    assert read_metric("nothing here", MetricSpec()) is None
    assert read_metric("x=nan", MetricSpec(kind="regex", pattern=r"x=(\S+)")) is None
    with pytest.raises(ValueError):
        MetricSpec(kind="regex", pattern="no group")


def test_latency_is_a_robust_median_and_failures_raise(tmp_path):
    target = tmp_path / "t.py"
    target.write_text("import time; time.sleep(0.05)\n")
    value = LatencyMetric(f"{PY} {{target}}", runs=3, warmup=0)(str(target))
    assert 0.05 <= value < 5
    target.write_text("raise SystemExit(4)\n")
    with pytest.raises(RuntimeError, match="exited 4"):
        LatencyMetric(f"{PY} {{target}}", runs=1)(str(target))


def test_command_number_last_number_or_regex(tmp_path):
    target = tmp_path / "t.py"
    target.write_text("print('accuracy: 0.8125 on 16 cases')\n")
    assert CommandNumber(f"{PY} {{target}}")(str(target)) == 16
    assert CommandNumber(f"{PY} {{target}}", pattern=r"accuracy: (\S+)")(str(target)) == 0.8125
    with pytest.raises(RuntimeError):
        CommandNumber(f"{PY} -c 'print(1)' ; exit 1")(str(target))


def test_composite_weights(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("x")
    parts = [(lambda p: 2.0, 0.7), (lambda p: 10.0, -0.3)]
    assert CompositeMetric(parts)(str(target)) == pytest.approx(1.4 - 3.0)


def test_llm_judge_against_the_fake_openai_server(tmp_path):
    target = tmp_path / "prompt.md"
    target.write_text("You are a helpful support agent.\n")
    with FakeModelServer(["Clear but vague.\n7.5", "Score: 14"]) as srv:
        judge = LLMJudge("Rate clarity.", f"openai-compatible:judge@{srv.openai_base_url}")
        assert judge(str(target)) == 7.5
        assert judge(str(target)) == 10.0  # clamped to the scale
        body = srv.posts()[0].body
    text = str(body)
    assert "Rate clarity." in text and "helpful support agent" in text


def test_llm_judge_counts_its_spending_and_is_held_to_the_budget(tmp_path):
    from ratchetloop.budget import Budget, BudgetExceeded
    from ratchetloop.proposers.openai import OpenAIProposer

    target = tmp_path / "prompt.md"
    target.write_text("Be kind.\n")
    with FakeModelServer(default_text="6") as srv:  # each reply: 100 prompt + 20 completion
        model = OpenAIProposer("judge", base_url=srv.openai_base_url, local=True,
                               max_tokens=50, key_var=None)
        judge = LLMJudge("Rate kindness.", model)
        judge.budget = Budget(max_tokens=300)
        assert judge(str(target)) == 6 and judge(str(target)) == 6
        with pytest.raises(BudgetExceeded, match="token budget 300"):
            judge(str(target))  # 240 spent + about 110 more could cross 300
        assert len(srv.posts()) == 2
    assert judge.usage.total_tokens == 240
    assert judge.budget.totals.total_tokens == 240  # the run's totals, when Loop shares it
