"""Model-string routing, pricing (known / unknown / override) and the keys file."""

from __future__ import annotations

import json
import os

import pytest
from fakeservers import FakeModelServer

from ratchetloop.errors import ProposerError, RatchetError
from ratchetloop.experiment import Experiment
from ratchetloop.proposers import keys
from ratchetloop.proposers.agents import ClaudeCLIProposer, CodexCLIProposer
from ratchetloop.proposers.anthropic import AnthropicProposer
from ratchetloop.proposers.base import Usage
from ratchetloop.proposers.openai import OpenAIProposer
from ratchetloop.proposers.pricing import price
from ratchetloop.proposers.registry import ollama_base_url, resolve


@pytest.fixture
def exp(tmp_path, monkeypatch):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_COMPATIBLE_API_KEY", "OLLAMA_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RATCHET_KEYS_FILE", str(tmp_path / "keys.json"))
    (tmp_path / "EXPERIMENT.md").write_text("# Tiny\nMake f fast.\n")
    e = Experiment(
        name="tiny",
        target={"file": "candidate.c", "function": "f"},
        naive="naive.c",
        cases=[{"name": "small"}],
        prices={"ollama:priced": {"input": 1.0, "output": 2.0}},
    )
    e.root = tmp_path
    return e


@pytest.mark.parametrize(
    "model,cls,api",
    [
        ("gpt-4.1-mini", OpenAIProposer, "chat"),
        ("chatgpt-4o-latest", OpenAIProposer, "chat"),
        ("o3", OpenAIProposer, "responses"),
        ("o4-mini", OpenAIProposer, "responses"),
        ("gpt-5.4-2026-03-05", OpenAIProposer, "responses"),
        ("openai:davinci-next", OpenAIProposer, "chat"),
        ("claude-sonnet-4-6", AnthropicProposer, None),
        ("anthropic:future-model", AnthropicProposer, None),
    ],
)
def test_hosted_models_route_by_name(exp, monkeypatch, model, cls, api):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-o")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-a")
    p = resolve(model, exp, temperature=0.3, max_tokens=99)
    assert isinstance(p, cls)
    assert p.temperature == 0.3 and p.max_tokens == 99
    if api:
        assert p.api == api


def test_anthropic_gets_the_experiment_text_to_cache(exp, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-a")
    p = resolve("claude-haiku-4-5", exp)
    assert p.stable_text == "# Tiny\nMake f fast.\n"


def test_base_urls_from_environment(exp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-o")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-a")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:8")
    assert str(resolve("gpt-4.1", exp).client.base_url) == "http://127.0.0.1:9/v1/"
    assert str(resolve("claude-opus-4-7", exp).client.base_url).startswith("http://127.0.0.1:8")


def test_local_servers(exp, monkeypatch):
    p = resolve("ollama:qwen2.5-coder", exp)
    assert (p.model, p.name, p.local) == ("qwen2.5-coder", "ollama:qwen2.5-coder", True)
    assert str(p.client.base_url) == "http://localhost:11434/v1/"
    monkeypatch.setenv("OLLAMA_HOST", "10.0.0.5:1234")
    assert ollama_base_url() == "http://10.0.0.5:1234/v1"
    q = resolve("openai-compatible:Qwen/Qwen2.5-7B@http://127.0.0.1:8000/v1", exp)
    assert q.model == "Qwen/Qwen2.5-7B" and str(q.client.base_url) == "http://127.0.0.1:8000/v1/"
    with pytest.raises(RatchetError, match="openai-compatible:<model>@<base_url>"):
        resolve("openai-compatible:nourl", exp)


def test_local_cost_zero_unless_overridden(exp):
    with FakeModelServer(["a", "b"]) as srv:
        free = resolve(f"openai-compatible:m@{srv.openai_base_url}", exp)
        assert free.propose("x").usage.cost_usd == 0.0
        priced = resolve("ollama:priced", exp)
        priced.client = free.client  # same wire, the override is what is under test
        usage = priced.propose("x").usage  # fake usage: 100 prompt, 20 completion
    assert usage.cost_usd == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)


def test_cli_agents(exp):
    assert isinstance(resolve("claude-cli", exp), ClaudeCLIProposer)
    c = resolve("codex-cli:gpt-5", exp)
    assert isinstance(c, CodexCLIProposer) and c.model == "gpt-5"


def test_missing_key_and_unknown_model(exp):
    with pytest.raises(ProposerError, match="OPENAI_API_KEY"):
        resolve("gpt-4.1-mini", exp)
    with pytest.raises(ProposerError, match="ANTHROPIC_API_KEY"):
        resolve("claude-sonnet-4-6", exp)
    with pytest.raises(RatchetError, match="unknown model 'llama-3'"):
        resolve("llama-3", exp)


def test_price_known_unknown_override():
    u = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_prompt_tokens=0)
    assert price(u, "gpt-4.1-mini", provider_id="openai") == pytest.approx(0.4 + 1.6)
    assert price(u, "no-such-model-xyz", provider_id="openai") is None
    assert price(u, "no-such-model-xyz") is None
    over = {"gpt-4.1-mini": {"input": 10, "output": 20}}
    assert price(u, "gpt-4.1-mini", overrides=over) == pytest.approx(30.0)
    cached = Usage(prompt_tokens=1_000_000, cached_prompt_tokens=500_000, cache_write_tokens=0)
    table = {"x": {"input": 2, "output": 0, "cached_input": 1}}
    assert price(cached, "x", overrides=table) == pytest.approx(1.0 + 0.5)
    assert price(u, "anything", local=True) == 0.0


def test_keys_file_used_when_private_and_refused_otherwise(exp, tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"OPENAI_API_KEY": "sk-from-file"}))
    os.chmod(path, 0o600)
    assert keys.get_key("OPENAI_API_KEY") == "sk-from-file"
    assert keys.key_source("OPENAI_API_KEY") == "keys file"
    assert resolve("gpt-4.1-mini", exp).client.api_key == "sk-from-file"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert keys.get_key("OPENAI_API_KEY") == "sk-env"  # the environment wins
    monkeypatch.delenv("OPENAI_API_KEY")
    os.chmod(path, 0o644)
    with pytest.raises(RatchetError, match="chmod 600") as info:
        keys.get_key("OPENAI_API_KEY")
    assert "sk-from-file" not in str(info.value)
    assert keys.key_source("OPENAI_API_KEY") == "missing"


def test_keys_file_garbage_is_one_line_without_content(tmp_path, monkeypatch):
    path = tmp_path / "k.json"
    path.write_text('{"OPENAI_API_KEY": "sk-half')
    os.chmod(path, 0o600)
    monkeypatch.setenv("RATCHET_KEYS_FILE", str(path))
    with pytest.raises(RatchetError, match="not valid JSON") as info:
        keys.load_keys_file()
    assert "sk-half" not in str(info.value)
