"""The API key's value never reaches a Proposal's request/raw_response or any error text."""

from __future__ import annotations

import pytest
from fakeservers import FakeModelServer, Reply

from ratchetloop.errors import RatchetError
from ratchetloop.proposers.anthropic import AnthropicProposer
from ratchetloop.proposers.openai import OpenAIProposer
from ratchetloop.proposers.retry import RetryPolicy

KEY = "sk-proj-LEAKCANARY-9f8e7d6c5b4a"

SCRIPTS = [
    Reply(text="fine"),
    Reply(text=f"echo {KEY}"),  # a server that echoes the key into its body
    Reply(status=401, error_message=f"Incorrect API key provided: {KEY}"),
    Reply(status=403, error_message=f"key {KEY} lacks access"),
    Reply(status=404, error_message=f"no model for {KEY}"),
    Reply(status=400, error_message=f"bad request from {KEY}"),
    Reply(status=418, error_message=f"teapot {KEY}"),
    Reply(body=f"not json {KEY}"),
]


def backends(srv: FakeModelServer):
    quick = RetryPolicy(max_attempts=1, sleep=lambda s: None)
    yield OpenAIProposer("gpt-4.1-mini", api_key=KEY, base_url=srv.openai_base_url, retry=quick)
    yield OpenAIProposer("o3", api_key=KEY, base_url=srv.openai_base_url, retry=quick)
    yield AnthropicProposer(
        "claude-haiku-4-5", api_key=KEY, base_url=srv.anthropic_base_url, retry=quick
    )


@pytest.mark.parametrize("reply", SCRIPTS, ids=lambda r: f"{r.status}-{(r.text or '')[:4]}")
def test_key_never_leaks(reply):
    notices: list[str] = []
    with FakeModelServer(default_text=None) as srv:
        for proposer in backends(srv):
            proposer.notify = notices.append
            srv.push(reply)
            seen: list[str] = []
            try:
                out = proposer.propose("prompt")
                seen += [repr(out.request), out.raw_response or "", out.text, repr(out.meta)]
            except RatchetError as exc:
                seen += [str(exc), repr(exc), repr(getattr(exc, "request", None))]
                seen.append(getattr(exc, "raw_response", None) or "")
            assert all(KEY not in s for s in seen + notices), proposer.name
        sent = srv.posts()
    assert len(sent) == 3
    # ...while the key did go where it belongs: the auth header, and nowhere in the body
    assert all(KEY in " ".join(r.headers.values()) for r in sent)
    assert all(KEY not in repr(r.body) for r in sent)
