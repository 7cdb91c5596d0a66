"""Several models behind one proposer (`--model a,b,c`): a bandit picks who answers.

Each request goes to one arm, chosen by Thompson sampling on the accepted improvement
per dollar an arm's requests buy: its accept rate (drawn from a Beta posterior over its
concluded requests) times its mean gain when accepted (|log| of the winner's ratio to the
incumbent it beat, shrunk towards the mean gain of all arms by one pseudo-win) over its
mean cost per request (follow-up fixes included). While every request so far had a
price the cost is in dollars; once a free or unpriced model (a local server) is among
them, all arms are weighed per second of request time instead (the median), the one cost
they share.
A request that failed (no usable reply after retries) is a request without a win. Every
arm is tried once first. Because cost divides rather than being learned as part of a
reward, a model twenty times cheaper is preferred even before it has won: its drawn accept
rate needs to be only a twentieth of the other's. The draws come from a seeded generator:
the same feedback gives the same choices.

Anchor: ShinkaEvolve's bandit over LLMs (Lange et al., 2025), which weighs each model's
share of requests by the improvements its proposals brought.

The arms share one run budget (the loop attaches it to the bandit, which hands it to
every arm), so each arm checks every request against the same --max-cost.
`propose` and `observe` may be called from different threads (--parallel): the bandit's
bookkeeping is under a lock, the request itself is not; an arm whose calls must take
turns (not `parallel_safe`) gets a lock of its own.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from ..errors import RatchetError
from .base import Feedback, Proposal, ProposalFailed, Proposer, Usage

if TYPE_CHECKING:
    from ..budget import Budget

MIN_SECONDS = 1e-3  # a request timed at ~0 s must not look free


@dataclass
class Result:
    """What one concluded request bought (0 unless accepted) and what it cost."""

    gain: float
    cost_usd: float | None  # follow-ups included; None: unknown price
    seconds: float


@dataclass
class Arm:
    """One model and its record in this run."""

    proposer: Proposer
    requests: int = 0  # chosen, follow-ups not included (pending ones included)
    accepted: int = 0
    failed: int = 0  # requests that raised ProposalFailed
    results: list[Result] = field(default_factory=list)  # one per concluded request
    usage: Usage = field(default_factory=Usage)  # follow-ups included
    seconds: float = 0.0
    gate: AbstractContextManager[Any] = field(default_factory=nullcontext)

    @property
    def name(self) -> str:
        return self.proposer.name

    @property
    def wins(self) -> int:
        return sum(r.gain > 0 for r in self.results)


@dataclass
class Pending:
    """A request answered but not yet judged: its cost grows with follow-ups."""

    arm: int
    cost_usd: float | None
    seconds: float


def gain(feedback: Feedback, last_best: float | None) -> float:
    """|log| of the improvement an accepted proposal made, 0 for anything else. The ratio
    (candidate / incumbent it beat) comes from feedback.meta["ratio"] when the loop gives
    it, else from the best score this bandit saw accepted before."""
    if not feedback.status.startswith("accepted"):
        return 0.0
    given = feedback.meta.get("ratio")
    ratio = float(given) if _positive(given) else None
    if ratio is None and _positive(last_best) and _positive(feedback.score):
        ratio = feedback.score / last_best
    if ratio is None:
        return 1.0  # accepted, size unknown: count the acceptance itself
    step = math.log(ratio)
    return max(-step if feedback.lower_is_better else step, 0.0)


def _positive(x: object) -> TypeGuard[float]:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def unit(arms: Sequence[Arm]) -> str:
    """"usd" while every concluded request had a price, else "s" (request seconds): a
    free or unpriced model cannot be weighed in dollars against priced ones."""
    results = [r for arm in arms for r in arm.results]
    return "usd" if results and all(r.cost_usd for r in results) else "s"


def costs(arms: Sequence[Arm], per: str) -> list[float]:
    """Each arm's cost of a request in `per`. Dollars: the mean (a price is exact).
    Seconds: the median, which a cold first connection or one slow reply must not
    dominate, of the arm's requests plus one pseudo-request at the median of all arms'
    requests, so two timings are not yet a verdict. An arm with none concluded yet gets
    the figure of all arms' requests."""
    def cost(r: Result) -> float:
        return (r.cost_usd or 0.0) if per == "usd" else max(r.seconds, MIN_SECONDS)

    typical = statistics.fmean if per == "usd" else statistics.median
    every = [cost(r) for arm in arms for r in arm.results]
    overall = typical(every) if every else 1.0
    prior = [overall] if per == "s" else []
    return [typical([*(cost(r) for r in arm.results), *prior]) if arm.results else overall
            for arm in arms]


def gains(arms: Sequence[Arm]) -> list[float]:
    """Each arm's expected gain when it wins: its own wins, shrunk towards the mean win
    of all arms by one pseudo-win (1 before anyone has won: only ratios matter)."""
    won = [r.gain for arm in arms for r in arm.results if r.gain > 0]
    overall = statistics.fmean(won) if won else 1.0
    return [(sum(r.gain for r in arm.results) + overall) / (arm.wins + 1) for arm in arms]


def scores(arms: Sequence[Arm], accept_rates: Sequence[float]) -> list[float]:
    """Accepted improvement per unit of cost, for given accept rates."""
    per = unit(arms)
    return [p * g / c for p, g, c in zip(accept_rates, gains(arms), costs(arms, per),
                                         strict=True)]


def choose(arms: Sequence[Arm], rng: random.Random) -> int:
    """The arm for the next request: the first never tried, else Thompson sampling (an
    accept rate drawn from each arm's Beta posterior, times its gain, over its cost)."""
    for i, arm in enumerate(arms):
        if arm.requests == 0:
            return i
    drawn = [rng.betavariate(1 + arm.wins, 1 + len(arm.results) - arm.wins) for arm in arms]
    values = scores(arms, drawn)
    return max(range(len(arms)), key=values.__getitem__)


class BanditProposer:
    """Several proposers; each request goes to the arm the bandit picks."""

    parallel_safe = True  # its own state is locked; arms that are not get a gate each

    def __init__(self, proposers: Sequence[Proposer], *, seed: int = 0) -> None:
        names = [p.name for p in proposers]
        if len(proposers) < 2:
            raise RatchetError("a bandit needs at least two models")
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise RatchetError(f"--model names {', '.join(twice)} twice: name each model once")
        self.arms = [Arm(p, gate=nullcontext() if getattr(p, "parallel_safe", False)
                         else threading.Lock()) for p in proposers]
        self.name = ",".join(names)
        self.answers_follow_ups = all(p.answers_follow_ups for p in proposers)
        self.remote = any(getattr(p, "remote", False) for p in proposers)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.pending: dict[int, Pending] = {}
        self.ids = itertools.count(1)
        self.last_best: float | None = None
        self._budget: Budget | None = None

    # -- the run's budget, held by every arm --------------------------------------------
    @property
    def budget(self) -> Budget | None:
        return self._budget

    @budget.setter
    def budget(self, budget: Budget | None) -> None:
        self._budget = budget
        for arm in self.arms:
            arm.proposer.budget = budget  # type: ignore[attr-defined]

    # -- requests -----------------------------------------------------------------------
    def propose(self, prompt: str) -> Proposal:
        with self.lock:
            index = self.pick()
            self.arms[index].requests += 1
        proposal = self._ask(index, prompt)
        with self.lock:
            request = next(self.ids)
            self.pending[request] = Pending(index, proposal.usage.cost_usd,
                                            proposal.meta["bandit_seconds"])
        proposal.meta["bandit_request"] = request
        return proposal

    def follow_up(self, prompt: str, proposal: Proposal | None) -> Proposal:
        """A fix request about `proposal`: the arm that wrote it answers (the arm with the
        best expected score when it is unknown); its cost is added to that request's."""
        request = (proposal.meta.get("bandit_request") if proposal else None)
        with self.lock:
            pending = self.pending.get(request) if isinstance(request, int) else None
            # unknown: the best arm answers, and the cost is booked to no request
            pending = pending or Pending(self.best_arm(), 0.0, 0.0)
        return self._ask(pending.arm, prompt, pending)

    def _ask(self, index: int, prompt: str, pending: Pending | None = None) -> Proposal:
        """One request to one arm; its usage and time are booked to the arm, and a follow-up's
        also to the request it fixes. A failed first request is a request without a win."""
        arm = self.arms[index]
        start = time.monotonic()
        try:
            with arm.gate:
                proposal = arm.proposer.propose(prompt)
        except ProposalFailed as exc:
            self._book(arm, exc.usage, time.monotonic() - start, pending,
                       failed=exc.kind != "budget")  # a refused request was never sent
            exc.model = arm.name  # type: ignore[attr-defined]  # for the loop's record
            raise
        seconds = time.monotonic() - start
        self._book(arm, proposal.usage, seconds, pending)
        proposal.model = arm.name
        proposal.meta["bandit_seconds"] = seconds
        return proposal

    def _book(self, arm: Arm, usage: Usage, seconds: float, pending: Pending | None,
              failed: bool = False) -> None:
        with self.lock:
            arm.usage = arm.usage + usage
            arm.seconds += seconds
            if pending is not None:
                pending.cost_usd = _add_cost(pending.cost_usd, usage.cost_usd)
                pending.seconds += seconds
            elif failed:
                arm.failed += 1
                arm.results.append(Result(0.0, usage.cost_usd, seconds))

    def observe(self, proposal: Proposal, feedback: Feedback) -> None:
        """The request's result; the arm hears about its own proposal too."""
        request = proposal.meta.get("bandit_request")
        with self.lock:
            pending = self.pending.pop(request, None) if isinstance(request, int) else None
            if pending is None:
                return
            arm = self.arms[pending.arm]
            value = gain(feedback, self.last_best)
            if feedback.status == "accepted_best" and _positive(feedback.score):
                self.last_best = feedback.score
            arm.accepted += feedback.status.startswith("accepted")
            arm.results.append(Result(value, pending.cost_usd, pending.seconds))
        arm.proposer.observe(proposal, feedback)

    def pick(self) -> int:
        """The arm for the next request (called under the lock)."""
        return choose(self.arms, self.rng)

    # -- reading the state --------------------------------------------------------------
    def best_arm(self) -> int:
        """The arm with the best expected score (ties: the earlier one)."""
        rates = [(1 + arm.wins) / (2 + len(arm.results)) for arm in self.arms]
        values = scores(self.arms, rates)
        return max(range(len(self.arms)), key=values.__getitem__)

    def shares(self) -> dict[str, float]:
        """Each arm's share of the requests made so far."""
        total = sum(arm.requests for arm in self.arms) or 1
        return {arm.name: arm.requests / total for arm in self.arms}


def _add_cost(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b
