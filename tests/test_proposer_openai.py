"""The OpenAI backend through the official SDK against a fake server speaking real JSON."""

from __future__ import annotations

import pytest
from fakeservers import FakeModelServer, Reply

from ratchetloop.errors import ProposerError
from ratchetloop.proposers.base import CACHE_BREAK, ProposalFailed
from ratchetloop.proposers.openai import OpenAIProposer, uses_responses_api
from ratchetloop.proposers.retry import RetryPolicy

KEY = "sk-test-SECRET-0123456789abcdef"


def make(server: FakeModelServer, model: str = "gpt-4.1-mini", **kw) -> OpenAIProposer:
    waits: list[float] = []
    kw.setdefault("retry", RetryPolicy(max_attempts=3, sleep=waits.append))
    return OpenAIProposer(model, api_key=KEY, base_url=server.openai_base_url, **kw)


def test_chat_completion_text_usage_cached_and_cost():
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 100_000, "cached_tokens": 200_000}
    with FakeModelServer([Reply(text="int f(void) { return 1; }", usage=usage)]) as srv:
        p = make(srv, temperature=0.2, max_tokens=500)
        out = p.propose(f"stable\n{CACHE_BREAK}\nvarying")
        sent = srv.posts()[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body == out.request
    assert out.request == {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": "stable\nvarying"}],
        "max_completion_tokens": 500,
        "temperature": 0.2,
    }
    assert out.text == "int f(void) { return 1; }"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (1_000_000, 100_000)
    assert out.usage.cached_prompt_tokens == 200_000
    # genai-prices: gpt-4.1-mini $0.4 in / $0.1 cached / $1.6 out per MTok
    assert out.usage.cost_usd == pytest.approx(0.8 * 0.4 + 0.2 * 0.1 + 0.1 * 1.6)
    assert '"chat.completion"' in out.raw_response


def test_reasoning_model_uses_responses_api_and_counts_reasoning_tokens():
    usage = {
        "input_tokens": 300,
        "cached_tokens": 100,
        "output_tokens": 900,
        "reasoning_tokens": 800,
    }
    with FakeModelServer([Reply(text="answer", usage=usage)]) as srv:
        out = make(srv, "o4-mini", max_tokens=2000).propose("prompt")
        sent = srv.posts()[0]
    assert sent.path == "/v1/responses"
    assert sent.body == {"model": "o4-mini", "input": "prompt", "max_output_tokens": 2000}
    assert out.text == "answer"
    assert out.usage.completion_tokens == 900  # reasoning tokens are completion tokens
    assert out.meta["reasoning_tokens"] == 800
    assert out.usage.cached_prompt_tokens == 100
    assert uses_responses_api("gpt-5.4") and uses_responses_api("o1")
    assert not uses_responses_api("gpt-4.1") and not uses_responses_api("chatgpt-4o-latest")


def test_429_retry_after_is_honoured():
    waits: list[float] = []
    script = [Reply(status=429, headers={"retry-after": "7"}), Reply(text="ok")]
    with FakeModelServer(script) as srv:
        p = make(srv, retry=RetryPolicy(max_attempts=3, sleep=waits.append))
        assert p.propose("x").text == "ok"
        assert len(srv.posts()) == 2
    assert waits == [7.0]


def test_500_then_success_backs_off_with_jitter_within_bounds():
    waits: list[float] = []
    with FakeModelServer([Reply(status=500), Reply(status=503), Reply(text="ok")]) as srv:
        p = make(srv, retry=RetryPolicy(max_attempts=4, base_delay=1.0, sleep=waits.append))
        assert p.propose("x").text == "ok"
    assert len(waits) == 2 and 0 <= waits[0] <= 1.0 and 0 <= waits[1] <= 2.0


def test_persistent_5xx_becomes_a_recorded_failure_after_bounded_attempts():
    with FakeModelServer([Reply(status=502)] * 5) as srv:
        p = make(srv, retry=RetryPolicy(max_attempts=3, sleep=lambda s: None))
        with pytest.raises(ProposalFailed) as info:
            p.propose("x")
        assert len(srv.posts()) == 3
    assert info.value.kind == "http_502"
    assert info.value.request["model"] == "gpt-4.1-mini"


def test_401_is_one_line_proposer_error_without_the_key():
    msg = f"Incorrect API key provided: {KEY}. You can find your API key at ..."
    with FakeModelServer([Reply(status=401, error_message=msg)]) as srv:
        with pytest.raises(ProposerError) as info:
            make(srv).propose("x")
        assert len(srv.posts()) == 1  # never retried
    text = str(info.value)
    assert "\n" not in text and KEY not in text and KEY[:12] not in text
    assert "OPENAI_API_KEY" in text and "401" in text


@pytest.mark.parametrize("status,words", [(403, "no access"), (404, "unknown model")])
def test_403_404_are_clear_proposer_errors(status, words):
    with FakeModelServer([Reply(status=status)]) as srv:
        with pytest.raises(ProposerError, match=words):
            make(srv).propose("x")


def test_timeout_is_retried_then_recorded():
    with FakeModelServer([Reply(hang=True), Reply(hang=True)]) as srv:
        p = make(srv, timeout=0.2, retry=RetryPolicy(max_attempts=2, sleep=lambda s: None))
        with pytest.raises(ProposalFailed) as info:
            p.propose("x")
    assert info.value.kind == "timeout"


def test_connection_refused_stops_first_then_is_a_recorded_failure():
    """A server never reached stops the run (one line); once it answered, a lost
    connection is one recorded failure of that iteration."""
    with FakeModelServer([Reply(text="hi", headers={"connection": "close"})]) as srv:
        url = srv.openai_base_url
        p = OpenAIProposer(
            "gpt-4.1-mini", api_key=KEY, base_url=url, retry=RetryPolicy(2, sleep=lambda s: None)
        )
        fresh = OpenAIProposer(
            "gpt-4.1-mini", api_key=KEY, base_url=url, retry=RetryPolicy(2, sleep=lambda s: None)
        )
        assert p.propose("x").text == "hi"
    with pytest.raises(ProposalFailed) as info:
        p.propose("x")
    assert info.value.kind == "connection_error"
    with pytest.raises(ProposerError) as stop:
        fresh.propose("x")
    assert "cannot connect" in str(stop.value) and "gave up after 2 attempts" in str(stop.value)
    assert KEY not in str(stop.value)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>bad gateway</html>",
        b'{"choices": []}',
        b'{"choices": [{"message": {"content": 5}}]}',
    ],
)
def test_malformed_body_is_a_recorded_failure_with_the_raw_text(body):
    with FakeModelServer([Reply(body=body)]) as srv:
        with pytest.raises(ProposalFailed) as info:
            make(srv).propose("x")
    assert info.value.kind == "malformed_response"
    assert info.value.raw_response == body.decode()


def test_temperature_unsupported_is_dropped_once_with_a_notice():
    notices: list[str] = []
    err = Reply(
        status=400,
        body={
            "error": {
                "message": "Unsupported value: 'temperature' does not support 0.2 with this model.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "unsupported_value",
            }
        },
    )
    with FakeModelServer([err, Reply(text="ok"), Reply(text="again")]) as srv:
        p = make(srv, "gpt-5", temperature=0.2, notify=notices.append)
        assert p.propose("x").text == "ok"
        assert p.propose("y").text == "again"
        bodies = [r.body for r in srv.posts()]
    assert "temperature" in bodies[0] and "temperature" not in bodies[1]
    assert "temperature" not in bodies[2]  # remembered: no second 400
    assert len(notices) == 1 and "\n" not in notices[0]


def test_other_400_stops_the_run_with_the_server_reason():
    with FakeModelServer([Reply(status=400, error_message="context too long")]) as srv:
        with pytest.raises(ProposerError, match="context too long"):
            make(srv).propose("x")


def test_empty_reply_is_a_recorded_failure_that_keeps_usage():
    with FakeModelServer([Reply(text="")]) as srv:
        with pytest.raises(ProposalFailed) as info:
            make(srv).propose("x")
    assert info.value.kind == "empty_response"
    assert info.value.usage.prompt_tokens == 100


def test_local_server_cost_zero_and_uses_max_tokens():
    with FakeModelServer(["ok"]) as srv:
        p = OpenAIProposer(
            "llama", base_url=srv.openai_base_url, local=True, max_tokens=64, key_var=None
        )
        out = p.propose("x")
    assert out.usage.cost_usd == 0.0
    assert out.request["max_tokens"] == 64
