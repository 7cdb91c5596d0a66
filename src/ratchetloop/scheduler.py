"""--parallel K and pipelining: the stages of several attempts at once, one writer.

    proposal threads (at most K requests out)  ->  screen (writer)  ->  queue for a slot
    ->  evaluation threads (one per benchmark slot: one per host)  ->  conclude (writer)

The calling thread is the one writer. It screens each proposal as it comes back (duplicates,
those in flight included; security), concludes each evaluation as it ends (decision,
commit, SCORES, MEMORY, runs/<n>/attempt.json) and reports, all in completion order,
holding the session's guard (loop.Guard). The other threads take the guard for the
moments they read or write the state, and let go while a request or an evaluation runs.

* A proposal is built against the incumbent of its moment, and timed against the
  incumbent of the moment its evaluation starts.
* With one slot (this host) evaluations never overlap, so each is concluded against the
  incumbent it was timed with. With more (a Ray cluster), a winner can be committed while
  another evaluation runs. That one was timed against a former incumbent, so if it looks
  like a win it is timed again, up to RETIME times, before it counts.
* What pipelining costs: a prompt sent while earlier candidates are still out cannot say
  how they fared. With K requests out, the last K results are missing from it.
* Stopping: a stop condition (patience, target, budget, time) stops new requests. What is
  already proposed is still evaluated and recorded, because it was paid for. Ctrl-C
  records everything in flight as interrupted, at once.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .budget import BudgetExceeded
from .loop import (
    Attempt,
    Outcome,
    Rejected,
    Session,
    abandon_attempt,
    after_attempt,
    begin_attempt,
    conclude,
    decide,
    evaluate_stage,
    next_iteration,
    propose_stage,
    screen_stage,
    stop_reason,
)

RETIME = 2  # times a candidate is re-timed after winners landed during its evaluation

Stage = Literal["proposed", "evaluated"]


@dataclass
class Flight:
    """The attempts between request and record, by where they are."""

    proposing: dict[int, Attempt] = field(default_factory=dict)
    waiting: deque[Attempt] = field(default_factory=deque)
    evaluating: dict[int, Attempt] = field(default_factory=dict)
    retimed: dict[int, int] = field(default_factory=dict)
    done: queue.Queue[tuple[Stage, Attempt, BaseException | None]] = field(
        default_factory=queue.Queue)

    def __bool__(self) -> bool:
        return bool(self.proposing or self.waiting or self.evaluating)

    def all(self) -> list[Attempt]:
        return [*self.proposing.values(), *self.waiting, *self.evaluating.values()]


def run_scheduled(s: Session, todo: int, outcomes: list[Outcome], slots: int) -> str:
    """Make `todo` attempts with up to K requests out and `slots` evaluations at once.
    Returns a stop reason, or "" when all were made. Called holding the guard."""
    k = max(1, s.options.parallel)
    flight = Flight()
    issued, reason = 0, ""
    stop: BaseException | None = None  # raised once everything in flight is recorded
    try:
        while True:
            if not reason and stop is None:
                reason = stop_reason(s) if issued < todo else ""
            while flight.waiting and len(flight.evaluating) < slots:
                a = flight.waiting.popleft()
                flight.evaluating[a.n] = a
                start(s, flight, "evaluated", evaluate_stage, a)
            while (issued < todo and not reason and stop is None
                   and len(flight.proposing) + len(flight.waiting) < k):
                a = begin_attempt(s, next_iteration(s))
                issued += 1
                flight.proposing[a.n] = a
                start(s, flight, "proposed", propose_stage, a)
            if not flight:
                break
            with s.guard.released():
                stage, a, error = flight.done.get()
            if stage == "proposed":
                del flight.proposing[a.n]
                stop = stop or settle_proposal(s, flight, a, error, outcomes)
            else:
                del flight.evaluating[a.n]
                if error is not None:
                    abandon_attempt(s, a, error)
                    stop = stop or error
                elif not retime(s, flight, a):
                    finish(s, a, outcomes)
    except KeyboardInterrupt as interrupt:
        for a in flight.all():
            abandon_attempt(s, a, interrupt)
        raise
    if stop is not None:
        raise stop
    return reason


def start(s: Session, flight: Flight, stage: Stage, work: Callable[[Session, Attempt], None],
          a: Attempt) -> None:
    """`work` in its own daemon thread (a hung request must not keep the process alive
    after Ctrl-C), holding the guard except where it lets go; the writer hears when done."""
    def body() -> None:
        error: BaseException | None = None
        try:
            with s.guard:
                work(s, a)
        except BaseException as exc:  # noqa: BLE001 - handed to the writer, which decides
            error = exc
        finally:
            s.budget.settle()
        flight.done.put((stage, a, error))

    threading.Thread(target=body, name=f"ratchet-{stage}-{a.n}", daemon=True).start()


def settle_proposal(s: Session, flight: Flight, a: Attempt, error: BaseException | None,
                    outcomes: list[Outcome]) -> BaseException | None:
    """A proposal is back: screen it and queue it for a slot, or record it now. A proposer
    that cannot go on (budget refused, tuner exhausted, setup error) ends the run once what
    is in flight is recorded; that error is returned."""
    if error is not None:
        if isinstance(error, BudgetExceeded):
            abandon_attempt(s, a, error)  # as the plain loop records a refused request
        return error
    screen_stage(s, a)
    if a.rejected:
        finish(s, a, outcomes)
    else:
        flight.waiting.append(a)
    return None


def retime(s: Session, flight: Flight, a: Attempt) -> bool:
    """True when `a` goes back to the queue: it was timed against a former incumbent (a
    winner landed meanwhile) and it looks like a win against that one."""
    if a.rejected or a.result is None or a.generation == s.generation:
        return False
    try:
        decide(s, a.result, a.run)
    except Rejected:
        return False  # not better than a former incumbent: not better than the current one
    times = flight.retimed.get(a.n, 0)
    if times >= RETIME:
        a.rejected = Rejected("failed", "retime_limit", f"the incumbent changed during each of"
                              f" {times + 1} timings", infrastructure=True)
        return False
    flight.retimed[a.n] = a.outcome.retimed = times + 1
    a.result = None
    flight.waiting.appendleft(a)
    return True


def finish(s: Session, a: Attempt, outcomes: list[Outcome]) -> None:
    try:
        outcomes.append(conclude(s, a))
    except KeyboardInterrupt as interrupt:  # it has left `flight`: record it here
        abandon_attempt(s, a, interrupt)
        raise
    after_attempt(s, a.n)
