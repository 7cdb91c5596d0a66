"""The Anthropic backend through the official SDK against a fake Messages server."""

from __future__ import annotations

import pytest
from fakeservers import FakeModelServer, Reply

from ratchetloop.errors import ProposerError
from ratchetloop.proposers.anthropic import AnthropicProposer, split_stable
from ratchetloop.proposers.base import CACHE_BREAK, ProposalFailed
from ratchetloop.proposers.retry import RetryPolicy

KEY = "sk-ant-SECRET-abcdef0123456789"


def make(server: FakeModelServer, **kw) -> AnthropicProposer:
    kw.setdefault("retry", RetryPolicy(max_attempts=3, sleep=lambda s: None))
    return AnthropicProposer(
        "claude-sonnet-4-6", api_key=KEY, base_url=server.anthropic_base_url, **kw
    )


def test_stable_prefix_is_cached_and_cache_tokens_counted():
    usage = {
        "input_tokens": 40,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2000,
        "output_tokens": 300,
    }
    with FakeModelServer([Reply(text="void f(void) {}", usage=usage)]) as srv:
        out = make(srv, temperature=0.5).propose(f"EXPERIMENT TEXT\n{CACHE_BREAK}\nbest so far")
        sent = srv.posts()[0]
    assert sent.path == "/v1/messages"
    assert sent.body == out.request
    content = sent.body["messages"][0]["content"]
    assert content[0] == {
        "type": "text",
        "text": "EXPERIMENT TEXT\n",
        "cache_control": {"type": "ephemeral"},
    }
    assert content[1] == {"type": "text", "text": "best so far"}
    assert sent.body["temperature"] == 0.5 and sent.body["max_tokens"] > 0
    assert out.text == "void f(void) {}"
    assert out.usage.prompt_tokens == 2040  # input + cache reads + cache writes
    assert out.usage.cached_prompt_tokens == 2000 and out.usage.cache_write_tokens == 0
    # $3 in, $0.30 cache read, $15 out per MTok
    assert out.usage.cost_usd == pytest.approx((40 * 3 + 2000 * 0.3 + 300 * 15) / 1e6)


def test_cache_write_counted_and_priced():
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }
    with FakeModelServer([Reply(text="x", usage=usage)]) as srv:
        out = make(srv).propose("p")
    assert out.usage.cache_write_tokens == 1000 and out.usage.prompt_tokens == 1010
    assert out.usage.cost_usd == pytest.approx((10 * 3 + 1000 * 3.75) / 1e6)


def test_split_rules():
    assert split_stable(f"a\n{CACHE_BREAK}\nb") == ("a\n", "b")
    assert split_stable("# Exp\nrules\n\nnow: x", "# Exp\nrules\n") == (
        "# Exp\nrules",
        "\n\nnow: x",
    )
    assert split_stable("no marker", "something else") == ("", "no marker")


def test_without_stable_part_one_uncached_block():
    with FakeModelServer(["ok"]) as srv:
        make(srv).propose("just this")
        content = srv.posts()[0].body["messages"][0]["content"]
    assert content == [{"type": "text", "text": "just this"}]


def test_overloaded_529_retried_with_retry_after():
    waits: list[float] = []
    script = [Reply(status=529, headers={"retry-after": "3"}), Reply(text="ok")]
    with FakeModelServer(script) as srv:
        p = make(srv, retry=RetryPolicy(max_attempts=3, sleep=waits.append))
        assert p.propose("x").text == "ok"
    assert waits == [3.0]


def test_401_one_line_without_key():
    with FakeModelServer([Reply(status=401, error_message=f"invalid x-api-key {KEY}")]) as srv:
        with pytest.raises(ProposerError) as info:
            make(srv).propose("x")
    assert KEY not in str(info.value) and "ANTHROPIC_API_KEY" in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_is_recorded():
    with FakeModelServer([Reply(body='{"type": "message", "content": "oops"}')]) as srv:
        with pytest.raises(ProposalFailed) as info:
            make(srv).propose("x")
    assert info.value.kind == "malformed_response"


def test_temperature_refused_is_dropped_and_retried():
    notices: list[str] = []
    refuse = Reply(status=400, error_message="temperature is not supported for this model")
    with FakeModelServer([refuse, Reply(text="ok")]) as srv:
        out = make(srv, temperature=0.7, notify=notices.append).propose("x")
        bodies = [r.body for r in srv.posts()]
    assert out.text == "ok" and len(notices) == 1
    assert bodies[0]["temperature"] == 0.7 and "temperature" not in bodies[1]


def test_a_request_is_priced_at_max_tokens_and_its_cache_write_before_it_is_sent():
    from ratchetloop.budget import Budget, BudgetExceeded, prompt_tokens

    stable = "EXPERIMENT TEXT " * 300
    with FakeModelServer(["ok"]) as srv:
        p = make(srv, max_tokens=10_000)  # $15/MTok out: $0.15, whatever the reply
        p.budget = Budget(max_cost=0.15)
        with pytest.raises(BudgetExceeded, match=r"cost budget \$0\.1500") as info:
            p.propose(f"{stable}\n{CACHE_BREAK}\nrest")
        assert srv.posts() == []
        p.budget = Budget(max_cost=0.16)
        assert p.propose(f"{stable}\n{CACHE_BREAK}\nrest").text == "ok"
    estimate = info.value.estimate
    assert estimate.completion_tokens == 10_000
    assert estimate.cache_write_tokens == prompt_tokens(stable + "\n")  # at $3.75, not $3
    assert estimate.cost_usd == pytest.approx(
        (estimate.cache_write_tokens * 3.75 + (estimate.prompt_tokens
         - estimate.cache_write_tokens) * 3 + 10_000 * 15) / 1e6)


def test_malformed_reply_keeps_its_usage():
    body = {"content": "not a list", "usage": {"input_tokens": 900, "output_tokens": 40}}
    with FakeModelServer([Reply(body=body)]) as srv:
        with pytest.raises(ProposalFailed) as info:
            make(srv).propose("x")
    assert info.value.kind == "malformed_response"
    assert (info.value.usage.prompt_tokens, info.value.usage.completion_tokens) == (900, 40)
    assert info.value.usage.cost_usd == pytest.approx((900 * 3 + 40 * 15) / 1e6)
