"""OpenAI Chat Completions and Responses, and any OpenAI-compatible server, via the
official `openai` SDK.

Reasoning models (o1/o3/o4…, gpt-5…) go through the Responses API, where reasoning tokens
are part of `output_tokens` and so count as completion tokens; everything else uses Chat
Completions. The SDK's own retries are off (`max_retries=0`) so `retry.RetryPolicy` is
the one policy. The request body is kept for runs/<n>/; the key lives only in the client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import openai

from ..budget import ASSUMED_COMPLETION_TOKENS, prompt_tokens
from .base import CACHE_BREAK, BaseProposer, Proposal, Usage, bad_reply, token_count
from .pricing import price
from .retry import (
    RetryPolicy,
    call_sdk,
    notify_stderr,
    one_line,
    send_dropping_temperature,
)

_REASONING = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)
DEFAULT_TIMEOUT = 600.0  # seconds per request; reasoning models think for minutes


def uses_responses_api(model: str) -> bool:
    """o-series and gpt-5* are reasoning models: Responses API."""
    return bool(_REASONING.match(model))



class OpenAIProposer(BaseProposer):
    """One prompt in, one reply out, with usage and cost; OpenAI or a compatible server."""

    remote = parallel_safe = True  # the SDK client serves several threads at once

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        api: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        local: bool = False,
        key_var: str | None = "OPENAI_API_KEY",
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        notify: Callable[[str], None] = notify_stderr,
    ) -> None:
        self.model = model
        self.name = name or model
        self.api = api or ("responses" if uses_responses_api(model) else "chat")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prices = prices or {}
        self.local = local
        self.key_var = key_var
        self.retry = retry or RetryPolicy()
        self.notify = notify
        self._key = api_key
        # Local servers often want no key, but the SDK insists on one: send a placeholder.
        self.client = openai.OpenAI(
            api_key=api_key or "not-needed",
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
        )
        self.timeout = timeout
        self.longest_reply = 0  # completion tokens: bounds the estimate without max_tokens

    # -- request ------------------------------------------------------------------------
    def build_request(self, prompt: str) -> dict[str, Any]:
        text = prompt.replace(CACHE_BREAK + "\n", "").replace(CACHE_BREAK, "")
        body: dict[str, Any] = {"model": self.model}
        if self.api == "responses":
            body["input"] = text
            if self.max_tokens is not None:
                body["max_output_tokens"] = self.max_tokens
        else:
            body["messages"] = [{"role": "user", "content": text}]
            if self.max_tokens is not None:
                # OpenAI itself wants max_completion_tokens; older compatible servers only
                # know max_tokens.
                key = "max_tokens" if self.local else "max_completion_tokens"
                body[key] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def estimate(self, body: dict[str, Any]) -> Usage:
        """What sending `body` could spend, for the budget: its prompt's size, rounded up,
        and a reply of max_tokens (without one: the assumed or the longest reply seen)."""
        text = body["input"] if self.api == "responses" else "".join(
            m["content"] for m in body["messages"])
        usage = Usage(prompt_tokens=prompt_tokens(text), completion_tokens=self.max_tokens
                      or max(ASSUMED_COMPLETION_TOKENS, self.longest_reply))
        usage.cost_usd = self.price(usage)
        return usage

    def price(self, usage: Usage) -> float | None:
        return price(
            usage,
            self.model,
            overrides=self.prices,
            aliases=(self.name,),
            provider_id=None if self.local else "openai",
            local=self.local,
        )

    def _send(self, body: dict[str, Any]) -> str:
        """One HTTP attempt; returns the raw body text or raises per the retry policy."""
        endpoint = (
            self.client.responses if self.api == "responses" else self.client.chat.completions
        )
        return call_sdk(self, openai, endpoint.with_raw_response.create, body, body,
                        key_var=self.key_var)

    def propose(self, prompt: str) -> Proposal:
        body = self.build_request(prompt)
        raw_text = send_dropping_temperature(self, body, self._send, openai.BadRequestError)
        return self.parse(raw_text, body)

    # -- response -----------------------------------------------------------------------
    def parse(self, raw_text: str, body: dict[str, Any]) -> Proposal:
        """Reply text, usage and cost out of a raw Chat Completions / Responses body."""
        try:
            data = json.loads(raw_text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if self.api == "responses":
                text, usage, meta = self._parse_responses(data)
            else:
                text, usage, meta = self._parse_chat(data)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise bad_reply(self.name, "malformed_response",
                            one_line(str(exc), (self._key,), 120),
                            self._salvage_usage(raw_text), body, raw_text) from None
        usage.cost_usd = self.price(usage)
        self.longest_reply = max(self.longest_reply, usage.completion_tokens)
        if not text.strip():
            why = meta.get("finish_reason") or "no text"
            raise bad_reply(self.name, "empty_response", why, usage, body, raw_text)
        meta["api"] = self.api
        return Proposal(
            text=text, usage=usage, model=self.name, request=body, raw_response=raw_text, meta=meta
        )

    def _salvage_usage(self, raw_text: str) -> Usage:
        """The usage block of a body that is otherwise malformed, priced; else empty."""
        try:
            raw = json.loads(raw_text).get("usage")
            usage = (self._responses_usage(raw) if self.api == "responses"
                     else self._chat_usage(raw))
        except (ValueError, AttributeError, TypeError):
            return Usage()
        usage.cost_usd = self.price(usage)
        return usage

    @staticmethod
    def _chat_usage(raw: Any) -> Usage:
        raw_usage = raw if isinstance(raw, dict) else {}
        details = raw_usage.get("prompt_tokens_details") or {}
        return Usage(
            prompt_tokens=token_count(raw_usage.get("prompt_tokens")),
            completion_tokens=token_count(raw_usage.get("completion_tokens")),
            cached_prompt_tokens=token_count(details.get("cached_tokens")),
        )

    @staticmethod
    def _responses_usage(raw: Any) -> Usage:
        raw_usage = raw if isinstance(raw, dict) else {}
        in_details = raw_usage.get("input_tokens_details") or {}
        return Usage(
            prompt_tokens=token_count(raw_usage.get("input_tokens")),
            completion_tokens=token_count(raw_usage.get("output_tokens")),  # includes reasoning
            cached_prompt_tokens=token_count(in_details.get("cached_tokens")),
        )

    @classmethod
    def _parse_chat(cls, data: dict[str, Any]) -> tuple[str, Usage, dict[str, Any]]:
        choice = data["choices"][0]
        content = choice["message"].get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError("message.content is not a string")
        raw_usage = data.get("usage") or {}
        out_details = raw_usage.get("completion_tokens_details") or {}
        usage = cls._chat_usage(raw_usage)
        meta = {
            "finish_reason": choice.get("finish_reason"),
            "reasoning_tokens": token_count(out_details.get("reasoning_tokens")),
            "served_model": data.get("model"),
        }
        return content or "", usage, meta

    @classmethod
    def _parse_responses(cls, data: dict[str, Any]) -> tuple[str, Usage, dict[str, Any]]:
        output = data["output"]
        if not isinstance(output, list):
            raise TypeError("output is not a list")
        parts: list[str] = []
        for item in output:
            if item.get("type") != "message":
                continue  # reasoning summaries, tool calls
            for block in item.get("content") or []:
                if block.get("type") == "output_text":
                    if not isinstance(block.get("text"), str):
                        raise TypeError("output_text.text is not a string")
                    parts.append(block["text"])
        raw_usage = data.get("usage") or {}
        out_details = raw_usage.get("output_tokens_details") or {}
        usage = cls._responses_usage(raw_usage)
        incomplete = data.get("incomplete_details") or {}
        meta = {
            "finish_reason": incomplete.get("reason") or data.get("status"),
            "reasoning_tokens": token_count(out_details.get("reasoning_tokens")),
            "served_model": data.get("model"),
        }
        return "".join(parts), usage, meta
