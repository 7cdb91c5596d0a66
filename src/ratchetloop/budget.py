"""Hard spending limits (--max-cost, --max-tokens), held where requests leave the process.

Every backend request -- the loop's proposal, each retry, a generic-mode fix, each
LLMJudge call -- is checked by its proposer just before it is sent. What the request could
spend is estimated from what is about to go out: the prompt's size (rounded up, see
`prompt_tokens`) and a completion as long as the backend's max_tokens, priced like a real
reply. If the spend so far plus that estimate would cross a limit, the request is not
sent: `BudgetExceeded` carries the reason, and the loop stops with it, state intact.

The spend so far is the run's usage totals (SCORES.json since the last seed, so a resumed
run keeps to its budget) plus the estimates of requests whose outcome is unknown: a request
that timed out may still have been billed. A price that is unknown cannot be held to a cost
limit, so under --max-cost such a request is refused too, saying so.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .proposers.base import ProposalFailed, Usage

if TYPE_CHECKING:
    from .scores import UsageTotals

# Tokenizers average 3.5-4.5 UTF-8 bytes per token on code and English; 3 rounds up, so a
# prompt is seldom underestimated.
BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 16  # role markers and framing around each text block
# A backend without max_tokens has no bound on its reply; the estimate assumes this many
# completion tokens (or the largest reply seen, when larger). --max-output-tokens makes it
# exact.
ASSUMED_COMPLETION_TOKENS = 16000


def prompt_tokens(text: str) -> int:
    """An estimate of `text`'s prompt tokens that errs on the high side."""
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS


class BudgetExceeded(ProposalFailed):
    """A request was not sent because it could cross a budget. It stops the run (the loop
    records what was already spent); a generic-mode fix refused this way simply is not
    made, like any failed fix request, and the run stops before the next iteration."""

    stop_quietly = True  # the run ends normally, with this as its stop reason

    def __init__(self, message: str, estimate: Usage) -> None:
        super().__init__(message, "budget")
        self.estimate = estimate


class Budget:
    """Limits plus the spend they are held against; one per run, shared by the loop's
    proposer and any LLMJudge, so every request counts against the same totals."""

    def __init__(self, max_cost: float | None = None, max_tokens: int | None = None,
                 totals: UsageTotals | None = None) -> None:
        if totals is None:
            from .scores import UsageTotals  # pydantic: not for the metric child's imports

            totals = UsageTotals()
        self.max_cost, self.max_tokens = max_cost, max_tokens
        self.totals = totals
        self.bound = False  # until bound, `totals` is this budget's own (see bind)
        self.uncertain = Usage()  # estimates of timed-out requests: perhaps billed
        self.refusal: str | None = None
        self.expected: dict[str, Usage] = {}  # each requester's latest estimate
        # --parallel: requests under way in other threads count at their estimate until
        # their thread settles, so K requests at once cannot overspend together
        self.reserved: dict[int, Usage] = {}
        self._lock = threading.Lock()

    @property
    def limited(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None

    def bind(self, totals: UsageTotals | None, max_cost: float | None = None,
             max_tokens: int | None = None) -> None:
        """Hold the run's limits (None keeps the current one) against the run's totals.
        Spend counted before the first binding (an LLMJudge scoring the seed) moves into
        them once."""
        limits = (max_cost if max_cost is not None else self.max_cost,
                  max_tokens if max_tokens is not None else self.max_tokens)
        new_totals = totals is not None and totals is not self.totals
        if limits != (self.max_cost, self.max_tokens) or new_totals:
            self.refusal = None
        self.max_cost, self.max_tokens = limits
        if totals is None or not new_totals:
            return
        if not self.bound:
            for name in type(totals).model_fields:
                setattr(totals, name, getattr(totals, name) + getattr(self.totals, name))
        self.totals, self.bound = totals, True

    def check(self, estimate: Usage, requester: str) -> None:
        """Before a request is sent: raise BudgetExceeded when it could cross a limit.
        The estimate stays reserved for this thread until it settles (or checks again)."""
        with self._lock:
            self.expected[requester] = estimate
            reason = self.excess(estimate, requester)
            if reason:
                self.refusal = reason
                raise BudgetExceeded(reason, estimate)
            self.reserved[threading.get_ident()] = estimate

    def settle(self) -> None:
        """This thread's request is over and its usage counted (or about to be)."""
        with self._lock:
            self.reserved.pop(threading.get_ident(), None)

    def hold(self, estimate: Usage) -> None:
        """A request's outcome is unknown (it timed out): count its estimate as spent."""
        self.uncertain = self.uncertain + estimate

    def record(self, usage: Usage) -> None:
        """Count a reply's usage (or a failed request's) into the run's totals."""
        self.totals.add(usage)

    def excess(self, estimate: Usage, requester: str = "the next request") -> str:
        """Why a request estimated at `estimate` could cross a limit; "" when it fits."""
        held = self.uncertain
        for thread, usage in list(self.reserved.items()):
            if thread != threading.get_ident():
                held = held + usage
        if self.max_tokens is not None:
            spent = self.totals.total_tokens + held.total_tokens
            if spent + estimate.total_tokens > self.max_tokens:
                return (f"token budget {self.max_tokens} would be exceeded by the next request"
                        f" (estimate {estimate.total_tokens} tokens for {requester}:"
                        f" {estimate.prompt_tokens} prompt + {estimate.completion_tokens}"
                        f" completion; {spent} already spent{_held(held)})")
        if self.max_cost is not None:
            if estimate.cost_usd is None:
                return (f"cost budget ${self.max_cost:.4f} cannot be held: the price of"
                        f" {requester} is unknown; name a priced model or add its price to"
                        " the experiment's `prices`")
            spent_cost = self.totals.cost_usd + (held.cost_usd or 0.0)
            if spent_cost + estimate.cost_usd > self.max_cost:
                return (f"cost budget ${self.max_cost:.4f} would be exceeded by the next"
                        f" request (estimate ${estimate.cost_usd:.4f} for {requester}:"
                        f" {estimate.prompt_tokens} prompt + {estimate.completion_tokens}"
                        f" completion tokens; ${spent_cost:.4f} already spent{_held(held)})")
        return ""

    def stop_reason(self, last: Usage | None = None) -> str:
        """Between iterations: a refusal, or a next request like the latest ones would not
        fit. `last` is the latest proposal's real usage, for proposers that do not estimate."""
        if self.refusal:
            return self.refusal
        if not self.limited:
            return ""
        guesses = [(u, name) for name, u in self.expected.items()]
        guesses += [(last, "the next request")] if last is not None else []
        for usage, name in guesses or [(Usage(), "the next request")]:
            reason = self.excess(usage, name)
            if reason:
                return reason
        return ""

    def summary(self) -> dict[str, Any]:
        """For runs/<n>/budget.json."""
        return {"max_cost": self.max_cost, "max_tokens": self.max_tokens,
                "spent_tokens": self.totals.total_tokens, "spent_cost": self.totals.cost_usd,
                "possibly_billed": asdict(self.uncertain)}


def _held(held: Usage) -> str:
    if not held.total_tokens:
        return ""
    cost = "" if held.cost_usd is None else f", ${held.cost_usd:.4f}"
    return f", of which {held.total_tokens} tokens{cost} by timed-out or unfinished requests"


def attach_budget(proposer: Any, max_cost: float | None = None, max_tokens: int | None = None,
                  totals: UsageTotals | None = None) -> Budget:
    """The proposer's budget (made and attached if it has none), bound to `totals` and the
    limits. Idempotent: the loop calls it at load time and before every iteration."""
    budget = getattr(proposer, "budget", None)
    if not isinstance(budget, Budget):
        budget = Budget()
        try:
            proposer.budget = budget
        except (AttributeError, TypeError):  # a frozen custom proposer: checks between
            pass  # iterations only, from its reported usage
    budget.bind(totals, max_cost, max_tokens)
    return budget
