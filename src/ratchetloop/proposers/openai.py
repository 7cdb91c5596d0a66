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
import sys
from collections.abc import Callable, Mapping
from typing import Any

import openai

from .base import CACHE_BREAK, BaseProposer, Proposal, ProposalFailed, Usage, token_count
from .pricing import price
from .retry import (
    RetryPolicy,
    call_sdk,
    one_line,
    send_dropping_temperature,
)

_REASONING = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)
DEFAULT_TIMEOUT = 600.0  # seconds per request; reasoning models think for minutes


def uses_responses_api(model: str) -> bool:
    """o-series and gpt-5* are reasoning models: Responses API."""
    return bool(_REASONING.match(model))


def _notify_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class OpenAIProposer(BaseProposer):
    """One prompt in, one reply out, with usage and cost; OpenAI or a compatible server."""

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
        notify: Callable[[str], None] = _notify_stderr,
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
            raise ProposalFailed(
                f"{self.name}: malformed response ({one_line(str(exc), (self._key,), 120)})",
                "malformed_response",
                request=body,
                raw_response=raw_text,
            ) from None
        usage.cost_usd = price(
            usage,
            self.model,
            overrides=self.prices,
            aliases=(self.name,),
            provider_id=None if self.local else "openai",
            local=self.local,
        )
        if not text.strip():
            raise ProposalFailed(
                f"{self.name}: empty reply ({meta.get('finish_reason') or 'no text'})",
                "empty_response",
                usage=usage,
                request=body,
                raw_response=raw_text,
            )
        meta["api"] = self.api
        return Proposal(
            text=text, usage=usage, model=self.name, request=body, raw_response=raw_text, meta=meta
        )

    @staticmethod
    def _parse_chat(data: dict[str, Any]) -> tuple[str, Usage, dict[str, Any]]:
        choice = data["choices"][0]
        content = choice["message"].get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError("message.content is not a string")
        raw_usage = data.get("usage") or {}
        details = raw_usage.get("prompt_tokens_details") or {}
        out_details = raw_usage.get("completion_tokens_details") or {}
        usage = Usage(
            prompt_tokens=token_count(raw_usage.get("prompt_tokens")),
            completion_tokens=token_count(raw_usage.get("completion_tokens")),
            cached_prompt_tokens=token_count(details.get("cached_tokens")),
        )
        meta = {
            "finish_reason": choice.get("finish_reason"),
            "reasoning_tokens": token_count(out_details.get("reasoning_tokens")),
            "served_model": data.get("model"),
        }
        return content or "", usage, meta

    @staticmethod
    def _parse_responses(data: dict[str, Any]) -> tuple[str, Usage, dict[str, Any]]:
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
        in_details = raw_usage.get("input_tokens_details") or {}
        out_details = raw_usage.get("output_tokens_details") or {}
        usage = Usage(
            prompt_tokens=token_count(raw_usage.get("input_tokens")),
            completion_tokens=token_count(raw_usage.get("output_tokens")),  # includes reasoning
            cached_prompt_tokens=token_count(in_details.get("cached_tokens")),
        )
        incomplete = data.get("incomplete_details") or {}
        meta = {
            "finish_reason": incomplete.get("reason") or data.get("status"),
            "reasoning_tokens": token_count(out_details.get("reasoning_tokens")),
            "served_model": data.get("model"),
        }
        return "".join(parts), usage, meta
