"""Anthropic Messages via the official `anthropic` SDK, with prompt caching on.

Caching: the loop's prompts start with the experiment text, which is the same every
iteration. The prompt is sent as two text blocks, the first (stable) one carrying
`cache_control: ephemeral`, so later iterations read it from the cache. Where to split:
1. at a `CACHE_BREAK` marker line, if the prompt builder put one there;
2. else right after the experiment's EXPERIMENT.md text, if the prompt contains it;
3. else the prompt goes as one uncached block (no guessing at a prefix that may change
   every call: a cache write that is never read costs 25% extra).
Anthropic reports `input_tokens` without the cached parts; `Usage.prompt_tokens` here is
the whole prompt (input + cache reads + cache writes), as for every other backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import anthropic

from ..budget import prompt_tokens
from .base import CACHE_BREAK, BaseProposer, Proposal, Usage, bad_reply
from .pricing import price
from .retry import (
    RetryPolicy,
    call_sdk,
    notify_stderr,
    one_line,
    send_dropping_temperature,
)

DEFAULT_MAX_TOKENS = 16000  # Messages requires max_tokens; enough for one function + note
DEFAULT_TIMEOUT = 600.0


def split_stable(prompt: str, stable_text: str | None = None) -> tuple[str, str]:
    """(stable prefix, varying rest) by the rules in the module docstring; ("", prompt)
    when there is no stable part to cache."""
    if CACHE_BREAK in prompt:
        head, _, tail = prompt.partition(CACHE_BREAK)
        tail = tail.replace(CACHE_BREAK, "")
        return head, tail.removeprefix("\n")
    if stable_text and stable_text.strip():
        at = prompt.find(stable_text.strip())
        if at >= 0:
            end = at + len(stable_text.strip())
            return prompt[:end], prompt[end:]
    return "", prompt



class AnthropicProposer(BaseProposer):
    """Claude through the Messages API; the stable prompt prefix is cached."""

    remote = parallel_safe = True  # the SDK client serves several threads at once

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        stable_text: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        notify: Callable[[str], None] = notify_stderr,
    ) -> None:
        self.model = model
        self.name = model
        self.temperature = temperature
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS
        self.prices = prices or {}
        self.stable_text = stable_text
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.notify = notify
        self._key = api_key
        self.client = anthropic.Anthropic(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
        )

    def build_request(self, prompt: str) -> dict[str, Any]:
        stable, rest = split_stable(prompt, self.stable_text)
        content: list[dict[str, Any]] = []
        if stable:
            content.append({"type": "text", "text": stable, "cache_control": {"type": "ephemeral"}})
        if rest or not content:
            content.append({"type": "text", "text": rest})
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def estimate(self, body: dict[str, Any]) -> Usage:
        """What sending `body` could spend, for the budget: its prompt's size, rounded up,
        the cached block priced as a cache write, and a reply of max_tokens."""
        blocks = body["messages"][0]["content"]
        usage = Usage(
            prompt_tokens=sum(prompt_tokens(b["text"]) for b in blocks),
            completion_tokens=self.max_tokens,
            cache_write_tokens=sum(prompt_tokens(b["text"]) for b in blocks
                                   if "cache_control" in b),
        )
        usage.cost_usd = self.price(usage)
        return usage

    def price(self, usage: Usage) -> float | None:
        return price(usage, self.model, overrides=self.prices, provider_id="anthropic")

    def _send(self, body: dict[str, Any]) -> str:
        kwargs = dict(body)
        if "temperature" in kwargs:  # not a typed parameter in current SDKs; send it raw
            kwargs["extra_body"] = {"temperature": kwargs.pop("temperature")}
        return call_sdk(self, anthropic, self.client.messages.with_raw_response.create, kwargs,
                        body, key_var="ANTHROPIC_API_KEY")

    def propose(self, prompt: str) -> Proposal:
        body = self.build_request(prompt)
        raw_text = send_dropping_temperature(self, body, self._send, anthropic.BadRequestError)
        return self.parse(raw_text, body)

    def parse(self, raw_text: str, body: dict[str, Any]) -> Proposal:
        try:
            data = json.loads(raw_text)
            if not isinstance(data, dict) or not isinstance(data["content"], list):
                raise ValueError("no content list")
            parts = []
            for block in data["content"]:
                if block.get("type") == "text":
                    if not isinstance(block.get("text"), str):
                        raise TypeError("text block without text")
                    parts.append(block["text"])
            usage = Usage.from_anthropic(data.get("usage"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise bad_reply(self.name, "malformed_response",
                            one_line(str(exc), (self._key,), 120),
                            self._salvage_usage(raw_text), body, raw_text) from None
        usage.cost_usd = self.price(usage)
        text = "".join(parts)
        meta = {"finish_reason": data.get("stop_reason"), "served_model": data.get("model")}
        if not text.strip():
            why = meta["finish_reason"] or "no text"
            raise bad_reply(self.name, "empty_response", why, usage, body, raw_text)
        return Proposal(
            text=text, usage=usage, model=self.name, request=body, raw_response=raw_text, meta=meta
        )

    def _salvage_usage(self, raw_text: str) -> Usage:
        """The usage block of a body that is otherwise malformed, priced; else empty."""
        try:
            usage = Usage.from_anthropic(json.loads(raw_text).get("usage"))
        except (ValueError, AttributeError):
            return Usage()
        usage.cost_usd = self.price(usage)
        return usage
