"""The `claude` and `codex` command-line agents as one-shot, non-interactive subprocesses.

claude: `claude -p --output-format json --tools "" --strict-mcp-config [--model M]`, the
prompt on stdin; one JSON object on stdout with `result`, `usage` and `total_cost_usd`.
codex: `codex exec --json --skip-git-repo-check --ephemeral --sandbox read-only
[--model M] -`, the prompt on stdin; JSONL events on stdout, the answer in the last
`item.completed` agent_message, usage in `turn.completed`.

Both run in a fresh empty temporary directory (they have nothing to read or edit there),
in their own process group (a timeout kills the whole group), with an environment cut
down to what they need: PATH, HOME, locale, proxies/CA certs, and their own settings and
key. Other secrets in the caller's environment are not passed on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from typing import Any

from ..budget import ASSUMED_COMPLETION_TOKENS, prompt_tokens
from ..errors import ProposerError
from . import keys
from .base import CACHE_BREAK, BaseProposer, Proposal, ProposalFailed, Usage, token_count
from .pricing import cost_from_table, lookup_cost
from .retry import one_line

DEFAULT_TIMEOUT = 900.0
_BASE_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
)


def scrubbed_env(extra: tuple[str, ...], keyvars: tuple[str, ...] = ()) -> dict[str, str]:
    """The base variables plus `extra` from os.environ, plus keys (env or keys file)."""
    env = {k: os.environ[k] for k in (*_BASE_ENV, *extra) if k in os.environ}
    for var in keyvars:
        value = keys.get_key(var)
        if value:
            env[var] = value
    return env


def run_agent(
    argv: list[str], prompt: str, env: Mapping[str, str], timeout: float, name: str
) -> tuple[int, str, str]:
    """Run `argv` with `prompt` on stdin in a temp dir; kill its process group on timeout."""
    with tempfile.TemporaryDirectory(prefix="ratchet-agent-") as cwd:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=dict(env),
                text=True,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ProposerError(
                f"{name}: `{argv[0]}` is not on PATH; install it or choose another --model"
            ) from None
        try:
            out, err = proc.communicate(prompt, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise ProposalFailed(f"{name}: no answer within {timeout:g}s", "timeout") from None
    return proc.returncode, out, err


class _AgentProposer(BaseProposer):
    remote = parallel_safe = True  # each request is its own process in its own temp dir
    binary = ""
    label = ""
    env_extra: tuple[str, ...] = ()
    keyvars: tuple[str, ...] = ()

    def __init__(
        self,
        model: str | None = None,
        *,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        binary: str | None = None,
    ) -> None:
        self.model = model
        self.name = f"{self.label}:{model}" if model else self.label
        self.prices = prices or {}
        self.timeout = timeout
        self.binary = binary or self.binary
        # The largest request seen: an agent adds its own system prompt, so the prompt's
        # size alone underestimates; and it takes no max_tokens.
        self.largest = Usage(cost_usd=None)
        self.served_model: str | None = None

    def argv(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def parse(self, out: str) -> tuple[str, Usage, str | None, dict[str, Any]]:
        """(answer, usage, model used, meta) from stdout."""
        raise NotImplementedError  # pragma: no cover

    def cost(self, usage: Usage, model: str | None, reported: float | None) -> float | None:
        """Override first, then the agent's own figure, then the price table, else unknown."""
        for name in (self.name, model, self.model):
            if name and name in self.prices:
                return cost_from_table(usage, self.prices[name])
        if reported is not None:
            return reported
        return lookup_cost(usage, model) if model else None

    def estimate(self, prompt: str) -> Usage:
        """What one run of the agent could spend, for the budget: the prompt's size or the
        largest prompt seen, a reply as long as assumed or the longest seen; priced by the
        model, else by the dearest run so far, else unknown."""
        usage = Usage(prompt_tokens=max(prompt_tokens(prompt), self.largest.prompt_tokens),
                      completion_tokens=max(ASSUMED_COMPLETION_TOKENS,
                                            self.largest.completion_tokens))
        priced = self.cost(usage, self.served_model or self.model, None)
        usage.cost_usd = priced if priced is not None else self.largest.cost_usd
        return usage

    def _note(self, usage: Usage) -> None:
        seen = self.largest
        cost = usage.cost_usd if seen.cost_usd is None else (
            seen.cost_usd if usage.cost_usd is None else max(seen.cost_usd, usage.cost_usd))
        self.largest = Usage(prompt_tokens=max(seen.prompt_tokens, usage.prompt_tokens),
                             completion_tokens=max(seen.completion_tokens,
                                                   usage.completion_tokens), cost_usd=cost)

    def propose(self, prompt: str) -> Proposal:
        prompt = prompt.replace(CACHE_BREAK + "\n", "").replace(CACHE_BREAK, "")
        argv = self.argv()
        request = {"argv": argv, "prompt": prompt}
        budget = self.budget
        estimate = self.estimate(prompt) if budget is not None and budget.limited else None
        if budget is not None and estimate is not None:
            budget.check(estimate, self.name)
        env = scrubbed_env(self.env_extra, self.keyvars)
        secrets = tuple(env[v] for v in self.keyvars if v in env)
        try:
            code, out, err = run_agent(argv, prompt, env, self.timeout, self.name)
        except ProposalFailed as exc:
            if budget is not None and estimate is not None and exc.kind == "timeout":
                budget.hold(estimate)  # killed mid-answer: what it spent is not known
            exc.request = request
            raise
        if code != 0 and not out.strip():
            last = one_line(err.strip().splitlines()[-1] if err.strip() else "", secrets)
            raise ProposalFailed(
                f"{self.name}: exited with status {code}: {last or 'no output'}",
                f"exit_{code}",
                request=request,
                raw_response=one_line(err, secrets, 4000),
            )
        try:
            text, usage, model, meta = self.parse(out)
        except ProposalFailed as exc:
            self._note(exc.usage)
            exc.request = request
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProposalFailed(
                f"{self.name}: malformed output ({one_line(str(exc), secrets, 120)})",
                "malformed_response",
                request=request,
                raw_response=out,
            ) from None
        self._note(usage)
        self.served_model = model or self.served_model
        if not text.strip():
            raise ProposalFailed(
                f"{self.name}: empty answer", "empty_response", usage=usage, request=request
            )
        meta["served_model"] = model
        return Proposal(
            text=text, usage=usage, model=self.name, request=request, raw_response=out, meta=meta
        )


class ClaudeCLIProposer(_AgentProposer):
    """Claude Code in print mode, tools off: a pure prompt-in, answer-out call."""

    binary = "claude"
    label = "claude-cli"
    env_extra = ("CLAUDE_CONFIG_DIR", "ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL")
    keyvars = (keys.ANTHROPIC,)

    def argv(self) -> list[str]:
        argv = [self.binary, "-p", "--output-format", "json", "--tools", "", "--strict-mcp-config"]
        return argv + (["--model", self.model] if self.model else [])

    def parse(self, out: str) -> tuple[str, Usage, str | None, dict[str, Any]]:
        data = json.loads(out)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        usage = Usage.from_anthropic(data.get("usage"))
        model_usage = data.get("modelUsage")
        model = next(iter(model_usage), None) if isinstance(model_usage, dict) else None
        model = model or self.model
        result = data.get("result")
        reported = data.get("total_cost_usd")
        usage.cost_usd = self.cost(usage, model, float(reported)
                                   if isinstance(reported, int | float) else None)
        if data.get("is_error") or data.get("subtype", "success") != "success":
            detail = one_line(str(result or data.get("subtype") or "error"), (), 160)
            if any(w in detail.lower() for w in ("api key", "login", "log in", "authenticat")):
                raise ProposerError(f"claude-cli is not authenticated: {detail}")
            raise ProposalFailed(
                f"claude-cli: {detail}", "agent_error", usage=usage, raw_response=out
            )
        if not isinstance(result, str):
            raise TypeError("no result text")
        meta = {"session_id": data.get("session_id"), "num_turns": data.get("num_turns")}
        return result, usage, model, meta


class CodexCLIProposer(_AgentProposer):
    """Codex in exec mode, read-only sandbox, no session kept."""

    binary = "codex"
    label = "codex-cli"
    env_extra = ("CODEX_HOME", "OPENAI_BASE_URL")
    keyvars = ("CODEX_API_KEY", keys.OPENAI)

    def argv(self) -> list[str]:
        argv = [
            self.binary,
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--ephemeral",
            "--sandbox",
            "read-only",
            "--color",
            "never",
        ]
        return argv + (["--model", self.model] if self.model else []) + ["-"]

    def parse(self, out: str) -> tuple[str, Usage, str | None, dict[str, Any]]:
        answer: str | None = None
        usage = Usage()
        errors: list[str] = []
        events = 0
        for line in out.splitlines():
            if not line.strip().startswith("{"):
                continue
            event = json.loads(line)
            events += 1
            kind = event.get("type")
            if kind == "item.completed":
                item = event.get("item") or {}
                if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                    answer = item["text"]
            elif kind == "turn.completed":
                raw = event.get("usage") or {}
                usage = usage + Usage(
                    prompt_tokens=token_count(raw.get("input_tokens")),
                    completion_tokens=token_count(raw.get("output_tokens")),
                    cached_prompt_tokens=token_count(raw.get("cached_input_tokens")),
                )
            elif kind in ("turn.failed", "error"):
                err = event.get("error") if kind == "turn.failed" else event
                errors.append(str((err or {}).get("message", kind)))
        if events == 0:
            raise ValueError("no JSON events")
        usage.cost_usd = self.cost(usage, self.model, None)
        if answer is None and errors:
            detail = one_line(errors[-1], (), 160)
            if any(w in detail.lower() for w in ("401", "unauthorized", "login", "api key")):
                raise ProposerError(f"codex-cli is not authenticated: {detail}")
            raise ProposalFailed(f"codex-cli: {detail}", "agent_error", usage=usage)
        return answer or "", usage, self.model, {"events": events}
