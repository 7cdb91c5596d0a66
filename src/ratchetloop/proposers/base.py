"""What every proposer returns, and the one method it must have.

A proposer turns a rendered prompt into reply text. It never sees the evaluator, the
sandbox or the keys of other backends; the loop tells it afterwards how its proposal did
(`observe`), which the offline tuner uses and language models ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import RatchetError

if TYPE_CHECKING:
    from ..budget import Budget

# A prompt builder may put this line between the stable part of a prompt (experiment text)
# and the part that changes every iteration; backends with prompt caching cache what comes
# before it, and every backend removes it before sending.
CACHE_BREAK = "<!-- ratchet:cache-break -->"


def token_count(value: Any) -> int:
    """A token count from a wire body: an int, else 0 (never a bool, None or a string)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = 0.0  # None means "unknown price", never shown as $0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_anthropic(cls, raw: Any) -> Usage:
        """Anthropic's usage block (the API and the claude CLI): cache reads and writes are
        prompt tokens too, counted separately as well."""
        raw = raw if isinstance(raw, dict) else {}
        read = token_count(raw.get("cache_read_input_tokens"))
        write = token_count(raw.get("cache_creation_input_tokens"))
        return cls(prompt_tokens=token_count(raw.get("input_tokens")) + read + write,
                   completion_tokens=token_count(raw.get("output_tokens")),
                   cached_prompt_tokens=read, cache_write_tokens=write)

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None
            if self.cost_usd is None or other.cost_usd is None
            else (self.cost_usd + other.cost_usd)
        )
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_prompt_tokens + other.cached_prompt_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            cost,
        )


@dataclass
class Proposal:
    text: str
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    request: dict[str, Any] | None = None  # what was sent, without headers or keys
    raw_response: str | None = None  # the backend's raw body, for runs/<n>/
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Feedback:
    """How a proposal fared, told back to the proposer after evaluation."""

    status: str  # "accepted", "rejected", "failed", "duplicate"
    score: float | None = None  # overall candidate score in the experiment's unit
    lower_is_better: bool = True
    failure_kind: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ProposalFailed(RatchetError):
    """One proposal failed in a way the loop records and moves past (retries exhausted,
    malformed body, timeout). `kind` is a short signature such as "http_500",
    "malformed_response" or "timeout"; tokens already spent are kept in `usage`."""

    def __init__(
        self,
        message: str,
        kind: str,
        *,
        usage: Usage | None = None,
        request: dict[str, Any] | None = None,
        raw_response: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.usage = usage or Usage()
        self.request = request
        self.raw_response = raw_response


def bad_reply(name: str, kind: str, why: str, usage: Usage, request: dict[str, Any],
              raw: str) -> ProposalFailed:
    """A 200 whose body cannot be used (kind malformed_response or empty_response): the
    request was billed, so its usage and the raw body go into the record."""
    what = "malformed response" if kind == "malformed_response" else "empty reply"
    return ProposalFailed(f"{name}: {what} ({why})", kind, usage=usage, request=request,
                          raw_response=raw)


@runtime_checkable
class Proposer(Protocol):
    name: str  # shown in SCORES.md "Model" column and commit messages
    answers_follow_ups: bool  # can answer a free-form follow-up prompt (a fix request)

    def propose(self, prompt: str) -> Proposal: ...

    def observe(self, proposal: Proposal, feedback: Feedback) -> None: ...


class BaseProposer:
    """Convenience base: language models need not care about feedback."""

    name = "base"
    answers_follow_ups = True
    # A request takes seconds (a model behind a network or a CLI): by default the loop
    # requests the next proposal while the last one is evaluated (loop.pipelining).
    remote = False
    # Several propose() calls may run at once (--parallel); otherwise the loop takes turns.
    parallel_safe = False
    # The run's spending limits, checked before each request is sent (budget.py); the
    # loop attaches one at load time.
    budget: Budget | None = None
    # Whether any request got through: a server that never answered stops the run
    # (retry.send_dropping_temperature), one that answered before is a recorded failure.
    reached: bool = False

    def propose(self, prompt: str) -> Proposal:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, proposal: Proposal, feedback: Feedback) -> None:
        return None
