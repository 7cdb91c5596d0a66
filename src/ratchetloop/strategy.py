"""The outer loop (`--outer-every K`): every K iterations, read the trace, rewrite the strategy.

The inner loop proposes, evaluates and keeps winners; it never changes how it searches.
This module is the bilevel part: a step that looks at what the last K attempts did (accept
rate, failure signatures and their counts, cost per accepted gain, which ideas won) and
writes a new `Strategy`: directions to pursue and to drop (a prompt section for language
models), an exploration level (the tuner's share of random samples; for a model, "try
something unlike the winners"), an optional temperature, knobs the tuner keeps frozen or
unfreezes, and a proposer mix for proposers that can mix.

The step is a model (`--outer-model`, any backend of the registry, its usage counted like
any request) or, with none, `rule_based_step`, a small controller meant for the tuner. A
model's bad reply keeps the current strategy and is recorded as such: the run never stops
for it. Every version is kept in STRATEGY.json (with each step's trace and verdict) and
STRATEGY.md (rendered); each new version is committed where the workspace keeps state, so
git has the history, and SCORES shows the accept rate under each version.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import replyjson
from .errors import RatchetError
from .experiment import Experiment
from .files import atomic_write_json, atomic_write_text, read_model
from .memory import signature
from .proposers.base import Proposal, ProposalFailed, Proposer, Usage
from .runs import attempts
from .scores import Scores, StrategyRate

STRATEGY_JSON = "STRATEGY.json"
STRATEGY_MD = "STRATEGY.md"
RECENT_WINNERS = 3  # the winners whose shared knob values get frozen
MIN_FREE_KNOBS = 2  # the rule-based step never freezes the search down to fewer knobs
MAX_EXPLORATION = 0.5  # the rule-based step's ceiling: half the samples random at most
WINNING_RATE = 0.2  # an accept rate at or above this lowers exploration
REPLY_LIMIT = 20_000  # characters of a model's reply kept in runs/<n>/outer_step.json
DEFAULT_EVERY = 10  # --outer-model alone turns the outer loop on at this K


# --------------------------------------------------------------------------- the models


class Strategy(BaseModel):
    """One version of how the search is steered."""

    version: int = 1
    from_iteration: int = 1  # the first iteration it applies to
    source: str = "initial"  # "initial", "rules" or "model:<name>"
    timestamp: str = ""
    directions_pursue: list[str] = Field(default_factory=list)
    directions_drop: list[str] = Field(default_factory=list)
    exploration: float = Field(0.0, ge=0.0, le=1.0)  # tuner: share of random samples
    temperature: float | None = Field(None, ge=0.0, le=2.0)  # None: the proposer's own
    freeze: dict[str, Any] = Field(default_factory=dict)  # knob -> the value it keeps
    widen: list[str] = Field(default_factory=list)  # knobs this version unfroze
    proposer_mix: dict[str, float] = Field(default_factory=dict)  # for proposers that mix
    why: str = ""

    def steering(self) -> dict[str, Any]:
        """What the search sees: two versions that steer alike are one version."""
        return self.model_dump(include={"directions_pursue", "directions_drop", "exploration",
                                         "temperature", "freeze", "proposer_mix"})


class Step(BaseModel):
    """One outer step: what it read and what it decided."""

    iteration: int
    timestamp: str
    source: str
    result: str  # "new version", "unchanged", "bad reply" or "request failed"
    version: int  # in force after the step
    error: str = ""
    trace: dict[str, Any] = Field(default_factory=dict)
    cost_usd: float | None = 0.0


class StrategyLog(BaseModel):
    """STRATEGY.json: every version, oldest first, and every step."""

    versions: list[Strategy] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)

    @property
    def current(self) -> Strategy:
        return self.versions[-1] if self.versions else Strategy()


class Won(BaseModel):
    iteration: int
    note: str
    speedup: float  # against the incumbent it beat (>1 is better)
    knobs: dict[str, Any] = Field(default_factory=dict)


class Trace(BaseModel):
    """What the last window of attempts did, from runs/*/attempt.json."""

    first_iteration: int
    last_iteration: int
    attempts: int = 0
    accepted: int = 0
    statuses: dict[str, int] = Field(default_factory=dict)
    failures: dict[str, int] = Field(default_factory=dict)  # signature -> count, most first
    cost_usd: float | None = 0.0  # None: some request had no known price
    gain: float = 1.0  # product of the window's accepted speedups
    winners: list[Won] = Field(default_factory=list)  # accepted in the window
    recent_winners: list[Won] = Field(default_factory=list)  # the last best winners, any time
    scored: list[tuple[dict[str, Any], float]] = Field(default_factory=list)  # knobs, score
    total_attempts: int = 0
    total_accepted: int = 0

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.attempts if self.attempts else 0.0

    @property
    def cost_per_gain(self) -> float | None:
        """USD per percent of accepted gain in the window (None: no gain, or cost unknown)."""
        if self.cost_usd is None or self.gain <= 1.0:
            return None
        return self.cost_usd / ((self.gain - 1.0) * 100)

    def summary(self) -> dict[str, Any]:
        per_gain = self.cost_per_gain
        return {"iterations": f"{self.first_iteration}-{self.last_iteration}",
                "attempts": self.attempts, "accepted": self.accepted,
                "accept_rate": round(self.accept_rate, 4), "statuses": self.statuses,
                "failures": dict(list(self.failures.items())[:10]), "cost_usd": self.cost_usd,
                "gain": round(self.gain, 6),
                "cost_per_gain_percent": None if per_gain is None else round(per_gain, 6),
                "ideas_that_won": [f"{w.note[:200]} (x{w.speedup:.3f}, iteration"
                                   f" {w.iteration})" for w in self.winners[-20:]]}


# --------------------------------------------------------------------------- the trace


def build_trace(records: list[dict[str, Any]], first: int, last: int,
                lower_is_better: bool) -> Trace:
    """The trace of attempts `first`..`last` (attempt.json dicts); winners' knobs come from
    the tuner's meta, so the rule-based step can see which values won."""
    trace = Trace(first_iteration=first, last_iteration=last)
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    chain: list[Won] = []
    cost: float | None = 0.0
    for a in sorted(records, key=lambda r: int(r.get("iteration") or 0)):
        n = int(a.get("iteration") or 0)
        if n > last:
            continue
        status = str(a.get("status") or "")
        won = _won(a, lower_is_better) if status.startswith("accepted") else None
        trace.total_attempts += 1
        trace.total_accepted += won is not None
        if won is not None and status == "accepted_best":
            chain.append(won)
        knobs, score = (a.get("meta") or {}).get("knobs"), a.get("score")
        if isinstance(knobs, dict) and isinstance(score, int | float):
            trace.scored.append((knobs, float(score) if lower_is_better else -float(score)))
        if n < first:
            continue
        trace.attempts += 1
        statuses[status] += 1
        if won is not None:
            trace.accepted += 1
            trace.winners.append(won)
            trace.gain *= won.speedup
        if status == "failed":
            failures[signature(str(a.get("failure_kind") or "failure"),
                               str(a.get("message") or ""))] += 1
        spent = (a.get("usage") or {}).get("cost_usd", 0.0)
        cost = None if cost is None or spent is None else cost + float(spent)
    trace.statuses = dict(statuses)
    trace.failures = dict(failures.most_common())
    trace.cost_usd = cost
    trace.recent_winners = chain[-RECENT_WINNERS:]
    trace.scored = trace.scored[-500:]
    return trace


def _won(a: dict[str, Any], lower_is_better: bool) -> Won:
    ratio = a.get("ratio")
    speedup = 1.0
    if isinstance(ratio, int | float) and ratio > 0:
        speedup = 1 / ratio if lower_is_better else float(ratio)
    knobs = (a.get("meta") or {}).get("knobs")
    return Won(iteration=int(a.get("iteration") or 0), note=str(a.get("note") or ""),
               speedup=speedup, knobs=knobs if isinstance(knobs, dict) else {})


def gather(exp: Experiment, last: int, window: int) -> Trace:
    """The trace of the `window` attempts up to `last`, read from runs/."""
    return build_trace(attempts(exp.root), max(1, last - window + 1), last,
                       exp.lower_is_better)


# --------------------------------------------------------------------------- the steps


def rule_based_step(trace: Trace, exp: Experiment, current: Strategy) -> Strategy:
    """The controller for the tuner (no key needed):

    * stuck (no accept in the window): raise exploration, and unfreeze what is frozen;
    * winning (accept rate >= 20%): lower exploration;
    * otherwise, freeze each knob whose value is the same in every one of the last 3 best
      winners (at least 2) and, over every attempt measured, has the best median score of
      all the knob's values (each measured at least twice), keeping at least 2 knobs free.
    Directions, for a language model, are the ideas that won and the failures that repeat."""
    stuck = trace.attempts > 0 and trace.accepted == 0
    exploration = current.exploration
    why = [f"iterations {trace.first_iteration}-{trace.last_iteration}: {trace.accepted}/"
           f"{trace.attempts} accepted"]
    if stuck:
        exploration = min(MAX_EXPLORATION, exploration + 0.25)
    elif trace.accept_rate >= WINNING_RATE:
        exploration = max(0.0, exploration - 0.1)
    if exploration != current.exploration:
        why.append(f"exploration {current.exploration:.2f} -> {exploration:.2f}")
    freeze = dict(current.freeze)
    widen: list[str] = []
    pursue = [f"{w.note} (won x{w.speedup:.3f} at iteration {w.iteration})"
              for w in sorted(trace.winners, key=lambda w: -w.speedup)[:3] if w.note]
    if stuck and freeze:
        widen, freeze = sorted(freeze), {}
        why.append(f"no accept: unfreeze {', '.join(widen)}")
    elif not stuck:
        recent = [w.knobs for w in trace.recent_winners if w.knobs]
        shared = _shared_values(recent, exp.knobs) if len(recent) >= 2 else {}
        shared = {k: v for k, v in shared.items()
                  if _best_marginal(trace.scored, k, v, exp.knobs[k])}
        room = max(0, len(exp.knobs) - MIN_FREE_KNOBS - len(freeze))
        new = {k: v for k, v in shared.items() if k not in freeze}
        new = dict(list(new.items())[:room])
        if new:
            freeze.update(new)
            why.append(f"freeze {_knobs_text(new)}: in each of the last {len(recent)} winners")
    pursue += [f"keep {k}={v}" for k, v in freeze.items()]
    drop = [f"{sig} ({count} failures)" for sig, count in trace.failures.items() if count >= 2][:3]
    return Strategy(directions_pursue=pursue, directions_drop=drop, exploration=exploration,
                    temperature=current.temperature, freeze=freeze, widen=widen,
                    proposer_mix=dict(current.proposer_mix), source="rules",
                    why="; ".join(why))


def _shared_values(winners: list[dict[str, Any]], knobs: dict[str, list[Any]]) -> dict[str, Any]:
    """Knobs (in the experiment's order) with one value across all `winners`."""
    out = {}
    for name, values in knobs.items():
        seen = {json.dumps(w.get(name), sort_keys=True) for w in winners}
        value = winners[-1].get(name)
        if len(seen) == 1 and value in values:
            out[name] = value
    return out


def _best_marginal(scored: list[tuple[dict[str, Any], float]], knob: str, value: Any,
                   values: list[Any]) -> bool:
    """Whether every value of the knob was measured at least twice and `value` has the
    lowest median score (lower is better here): a knob whose alternatives are untried
    is not frozen, however often the winners agree on it."""
    by: dict[str, list[float]] = {json.dumps(v, sort_keys=True): [] for v in values}
    for knobs, score in scored:
        by.setdefault(json.dumps(knobs.get(knob), sort_keys=True), []).append(score)
    if any(len(s) < 2 for s in by.values()):
        return False
    mine = statistics.median(by[json.dumps(value, sort_keys=True)])
    return all(mine <= statistics.median(s) for s in by.values())


def _knobs_text(knobs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in knobs.items())


class StepResult(BaseModel):
    """A model step's outcome: a new strategy, or the reason the current one stays."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    strategy: Strategy | None = None
    error: str = ""
    failed_request: bool = False
    usage: Usage = Field(default_factory=Usage)
    prompt: str = ""
    reply: str = ""


def model_step(proposer: Proposer, trace: Trace, exp: Experiment,
               current: Strategy) -> StepResult:
    """Ask a model for the next strategy as JSON. A failed request or a reply that is not
    a valid strategy keeps `current` (result.strategy is None, error says why)."""
    prompt = strategy_prompt(trace, exp, current)
    try:
        proposal: Proposal = proposer.propose(prompt)
    except ProposalFailed as exc:  # a refused budget too: the run stops before the next
        return StepResult(error=f"{exc.kind}: {exc}", failed_request=True, usage=exc.usage,
                          prompt=prompt, reply=exc.raw_response or "")
    result = StepResult(usage=proposal.usage, prompt=prompt, reply=proposal.text)
    try:
        result.strategy = parse_reply(proposal.text, exp, current)
    except StrategyReplyError as exc:
        result.error = str(exc)
    return result


class StrategyReplyError(ValueError):
    """A model's reply that is not a usable strategy (recorded, never raised to the run)."""


class _Reply(BaseModel):
    """The JSON a model answers with; a field left out keeps the current value."""

    model_config = ConfigDict(extra="forbid")

    directions_pursue: list[str] | None = None
    directions_drop: list[str] | None = None
    exploration: float | None = Field(None, ge=0.0, le=1.0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    freeze: dict[str, Any] | None = None
    widen: list[str] | None = None
    proposer_mix: dict[str, float] | None = None
    why: str = ""


def parse_reply(text: str, exp: Experiment, current: Strategy) -> Strategy:
    """The strategy in a model's reply (a ```json block, or the outermost {...})."""
    data = replyjson.largest(text)
    if data is None:
        raise StrategyReplyError("no JSON object in the reply (or none that parses)")
    try:
        reply = _Reply.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise StrategyReplyError(f"not a strategy: {where}: {err['msg']}") from None
    freeze = current.freeze if reply.freeze is None else reply.freeze
    for name in [*freeze, *(reply.widen or [])]:
        if name not in exp.knobs:
            raise StrategyReplyError(f"unknown knob {name!r} (knobs: {', '.join(exp.knobs)})")
    for name, value in freeze.items():
        if value not in exp.knobs[name]:
            raise StrategyReplyError(f"{name}={value!r} is not one of {exp.knobs[name]}")
    if any(v < 0 or not math.isfinite(v) for v in (reply.proposer_mix or {}).values()):
        raise StrategyReplyError("proposer_mix weights must be finite and >= 0")
    widen = reply.widen or []
    return Strategy(
        directions_pursue=_lines(reply.directions_pursue, current.directions_pursue),
        directions_drop=_lines(reply.directions_drop, current.directions_drop),
        exploration=current.exploration if reply.exploration is None else reply.exploration,
        temperature=current.temperature if reply.temperature is None else reply.temperature,
        freeze={k: v for k, v in freeze.items() if k not in widen}, widen=widen,
        proposer_mix=(current.proposer_mix if reply.proposer_mix is None
                      else reply.proposer_mix), why=reply.why[:1000])


def _lines(new: list[str] | None, old: list[str]) -> list[str]:
    items = old if new is None else new
    return [" ".join(str(t).split())[:300] for t in items if str(t).strip()][:8]


def strategy_prompt(trace: Trace, exp: Experiment, current: Strategy) -> str:
    """What the outer model reads: the trace, the current strategy, the knobs, the format."""
    knobs = json.dumps(exp.knobs) if exp.knobs else "none (a language model writes the code)"
    steering = current.steering()
    return "\n".join([
        f"You steer an evaluator-gated optimisation loop on the experiment {exp.name!r}:"
        f" {exp.description}",
        "Each iteration a proposer writes one candidate; only candidates proven better"
        f" ({exp.direction.replace('_', ' ')}, in {exp.unit}) are kept.",
        "", "## Trace of the last attempts", "```json",
        json.dumps(trace.summary(), indent=2), "```",
        "", f"## Current strategy (version {current.version})", "```json",
        json.dumps(steering, indent=2), "```",
        "", f"## Tuner knobs (name -> values): {knobs}",
        "", "## Your answer",
        "Write the next strategy as ONE ```json block with these keys (a key left out keeps"
        " its current value):",
        '- "directions_pursue": up to 8 short directions the proposer should pursue',
        '- "directions_drop": up to 8 directions to stop trying (e.g. repeated failures)',
        '- "exploration": 0..1 (0: refine the winners; 1: try unlike things; the tuner'
        " samples this share at random)",
        '- "temperature": 0..2 or null (the proposing model\'s sampling temperature)',
        '- "freeze": {"knob": value} knobs the tuner keeps fixed (values from the lists)',
        '- "widen": ["knob"] knobs to unfreeze',
        '- "proposer_mix": {"proposer": weight} (for proposers that mix)',
        '- "why": one or two sentences',
    ]) + "\n"


# --------------------------------------------------------------------------- rendering


def prompt_section(strategy: Strategy) -> str:
    """The strategy as a prompt section for language models ("" when it says nothing)."""
    lines = []
    if strategy.directions_pursue:
        lines += ["Pursue:", *(f"- {d}" for d in strategy.directions_pursue)]
    if strategy.directions_drop:
        lines += ["Drop (stop trying):", *(f"- {d}" for d in strategy.directions_drop)]
    if strategy.exploration >= 0.5:
        lines.append("Explore: the recent attempts stalled; try an idea unlike the winners.")
    elif strategy.exploration == 0 and strategy.version > 1:
        lines.append("Exploit: refine what won rather than starting over.")
    if not lines:
        return ""
    return "\n".join([f"## Search strategy (version {strategy.version}, from the outer loop)",
                      *lines]) + "\n"


def render(log: StrategyLog, experiment: str) -> str:
    """STRATEGY.md: the current version in full, then every version and step, newest first."""
    cur = log.current
    lines = [f"# {experiment} search strategy", "",
             f"Version {cur.version} ({cur.source}), in force from iteration"
             f" {cur.from_iteration}" + (f", written {cur.timestamp}" if cur.timestamp else ""),
             ""]
    lines += _strategy_lines(cur)
    lines += ["", "## Versions", "",
              "| Version | From iteration | Source | Exploration | Frozen | Why |",
              "|---|---|---|---|---|---|"]
    for v in reversed(log.versions):
        lines.append(f"| {v.version} | {v.from_iteration} | {v.source} | {v.exploration:.2f} |"
                     f" {_cell(_knobs_text(v.freeze)) or '-'} | {_cell(v.why) or '-'} |")
    if log.steps:
        lines += ["", "## Outer steps", "",
                  "| Iteration | Source | Accept rate | Result | Version after |",
                  "|---|---|---|---|---|"]
        for s in reversed(log.steps[-50:]):
            rate = s.trace.get("accept_rate")
            rate_text = "-" if rate is None else (f"{rate:.0%} ({s.trace.get('accepted')}/"
                                                  f"{s.trace.get('attempts')})")
            result = s.result + (f": {s.error}" if s.error else "")
            lines.append(f"| {s.iteration} | {s.source} | {rate_text} | {_cell(result)} |"
                         f" {s.version} |")
    return "\n".join(lines) + "\n"


def _strategy_lines(s: Strategy) -> list[str]:
    lines = [f"- exploration: {s.exploration:.2f}",
             f"- temperature: {'the proposer’s own' if s.temperature is None else s.temperature}",
             f"- frozen knobs: {_knobs_text(s.freeze) or 'none'}"]
    if s.widen:
        lines.append(f"- unfrozen by this version: {', '.join(s.widen)}")
    if s.proposer_mix:
        lines.append("- proposer mix: " + ", ".join(f"{k} {w:g}" for k, w in
                                                     s.proposer_mix.items()))
    lines += [f"- pursue: {d}" for d in s.directions_pursue]
    lines += [f"- drop: {d}" for d in s.directions_drop]
    if s.why:
        lines.append(f"- why: {s.why}")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def load(folder: Path) -> StrategyLog:
    path = folder / STRATEGY_JSON
    return read_model(path, StrategyLog) if path.exists() else StrategyLog()


def save(folder: Path, log: StrategyLog, experiment: str) -> None:
    atomic_write_json(folder / STRATEGY_JSON, log)
    atomic_write_text(folder / STRATEGY_MD, render(log, experiment), durable=False)


def paths(folder: Path) -> list[Path]:
    return [folder / STRATEGY_JSON, folder / STRATEGY_MD]


# --------------------------------------------------------------------------- applying


def apply(proposer: Any, strategy: Strategy) -> None:
    """Hand the strategy to the proposer: one with `apply_strategy` (the tuner: freeze and
    exploration; a mixing proposer: the mix) takes it whole; a language model takes the
    temperature when the strategy sets one. The prompt section goes in via the context."""
    hook = getattr(proposer, "apply_strategy", None)
    if callable(hook):
        hook(strategy)
    elif strategy.temperature is not None and hasattr(proposer, "temperature"):
        proposer.temperature = strategy.temperature


class Outer:
    """The outer loop of one run: the strategy log, the step, the per-version tally."""

    def __init__(self, exp: Experiment, proposer: Any, every: int,
                 model: Proposer | None = None,
                 now: Callable[[], str] = lambda: "") -> None:
        if every < 1:
            raise RatchetError("--outer-every must be at least 1")
        if model is not None and getattr(model, "name", "") == "tuner":
            raise RatchetError("--outer-model needs a language model (the tuner cannot"
                               " write a strategy); leave it out for the rule-based step")
        self.exp, self.proposer, self.every, self.model, self.now = (
            exp, proposer, every, model, now)
        self.log = load(exp.root)
        self.seen = (0, 0)  # SCORES' attempts and accepts at the last tally

    @property
    def current(self) -> Strategy:
        return self.log.current

    @property
    def source(self) -> str:
        return f"model:{getattr(self.model, 'name', 'model')}" if self.model else "rules"

    def start(self, next_iteration: int, scores: Scores | None = None) -> bool:
        """Apply the strategy in force (a resumed run's latest version) and start the
        tally from SCORES' counts; True when the initial version was just written (the
        caller commits it)."""
        if scores is not None:
            self.seen = (scores.counts.attempts, scores.counts.accepted)
        created = not self.log.versions
        if created:
            self.log.versions.append(Strategy(from_iteration=next_iteration,
                                              timestamp=self.now(),
                                              proposer_mix=self._default_mix()))
            save(self.exp.root, self.log, self.exp.name)
        apply(self.proposer, self.current)
        return created

    def _default_mix(self) -> dict[str, float]:
        return {str(getattr(self.proposer, "name", "proposer")): 1.0}

    def tally(self, scores: Scores) -> None:
        """Attempts concluded since the last tally count for the version in force (SCORES'
        accept rate per version): the differences of SCORES' own counts, so an attempt
        is counted once however the loop schedules them."""
        c = scores.counts
        attempts, accepted = c.attempts - self.seen[0], c.accepted - self.seen[1]
        self.seen = (c.attempts, c.accepted)
        if attempts <= 0 and accepted <= 0:
            return
        cur = self.current
        if not scores.strategies or scores.strategies[-1].version != cur.version:
            scores.strategies.append(StrategyRate(version=cur.version, source=cur.source,
                                                  from_iteration=cur.from_iteration))
        rate = scores.strategies[-1]
        rate.attempts += max(0, attempts)
        rate.accepted += max(0, accepted)

    def due(self, n: int) -> bool:
        return n > 0 and n % self.every == 0

    def step(self, n: int, trace: Trace | None = None) -> tuple[Step, Usage, StepResult | None]:
        """The outer step after iteration n; saves STRATEGY.json/md. Returns the step
        record, the usage to count and the model's exchange (None for the rules)."""
        trace = trace or gather(self.exp, n, self.every)
        current = self.current
        exchange: StepResult | None = None
        usage = Usage()
        if self.model is None:
            new: Strategy | None = rule_based_step(trace, self.exp, current)
        else:
            exchange = model_step(self.model, trace, self.exp, current)
            new, usage = exchange.strategy, exchange.usage
        step = Step(iteration=n, timestamp=self.now(), source=self.source, result="unchanged",
                    version=current.version, trace=trace.summary(), cost_usd=usage.cost_usd)
        if new is None and exchange is not None:
            step.result = "request failed" if exchange.failed_request else "bad reply"
            step.error = exchange.error[:500]
        elif new is not None and (new.steering() != current.steering() or new.widen):
            new.version, new.from_iteration = current.version + 1, n + 1
            new.timestamp, new.source = self.now(), self.source
            self.log.versions.append(new)
            step.result, step.version = "new version", new.version
            apply(self.proposer, new)
        self.log.steps.append(step)
        save(self.exp.root, self.log, self.exp.name)
        return step, usage, exchange
