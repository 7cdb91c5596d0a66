"""SCORES.json (source of truth for results and usage) and SCORES.md rendered from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .files import atomic_write_json, atomic_write_text, read_model
from .fmt import times
from .proposers.base import Usage


class Row(BaseModel):
    """One accepted result: the seed, a best winner, or an accepted nonbest (specialist)."""

    timestamp: str
    model: str
    kind: str  # "seed", "best", "nonbest"
    score: float  # overall median in the experiment's unit
    case_scores: dict[str, float] = Field(default_factory=dict)
    commit: str  # "seed" for the baseline
    note: str
    iteration: int = 0
    ratio: float | None = None  # candidate / incumbent it beat (overall, or its case)
    ci: tuple[float, float] | None = None
    cases_won: list[str] = Field(default_factory=list)  # cases it holds as specialist
    metrics: dict[str, float] = Field(default_factory=dict)  # named metrics (generic mode)


class UsageTotals(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0  # known part
    unpriced_requests: int = 0  # requests whose price is unknown

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_prompt_tokens += usage.cached_prompt_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        if usage.cost_usd is None:
            self.unpriced_requests += 1
        else:
            self.cost_usd += usage.cost_usd

    def cost_text(self) -> str:
        if self.unpriced_requests and not self.cost_usd:
            return "unknown"
        text = f"${self.cost_usd:.6f}"
        if self.unpriced_requests:
            text += f" + unknown ({self.unpriced_requests} unpriced requests)"
        return text


class ModelStats(BaseModel):
    """One model's share of the work (SCORES.md "Models", shown once several were used)."""

    requests: int = 0  # proposals asked of it (one per attempt; fixes not included)
    accepted: int = 0
    fixes: int = 0  # follow-up (fix) requests
    usage: UsageTotals = Field(default_factory=UsageTotals)  # fixes included


class Counts(BaseModel):
    attempts: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    duplicates: int = 0
    near_duplicates: int = 0  # of the duplicates: skipped by --novelty (novelty.py)


class ReviewStats(BaseModel):
    """What the --review model decided and cost (review.py), so its value can be weighed."""

    reviews: int = 0
    vetoes: dict[str, int] = Field(default_factory=dict)  # by category
    let_through: int = 0  # no readable verdict, or the request failed: not a veto
    usage: UsageTotals = Field(default_factory=UsageTotals)  # also in Scores.usage

    def add(self, veto: str | None, unreadable: bool, usage: Usage) -> None:
        self.reviews += 1
        if veto is not None:
            self.vetoes[veto] = self.vetoes.get(veto, 0) + 1
        self.let_through += unreadable
        self.usage.add(usage)

    def line(self) -> str:
        vetoes = ", ".join(f"{k} {v}" for k, v in sorted(self.vetoes.items()))
        return (f"- reviewer (--review): {self.reviews} reviews, {sum(self.vetoes.values())}"
                f" vetoes{f' ({vetoes})' if vetoes else ''}, {self.let_through} replies"
                f" without a verdict (let through); {self.usage.total_tokens} tokens,"
                f" estimated cost {self.usage.cost_text()} (in the usage above)")


class Drift(BaseModel):
    iteration: int
    timestamp: str
    ratio: float  # best / seed measured now
    ci: tuple[float, float] | None = None


class Rollback(BaseModel):
    """`ratchet rollback` made `to` the incumbent (and wrote it into the candidate file)."""

    timestamp: str
    to: str  # a commit, or "seed"
    previous: str  # the incumbent before


class StrategyRate(BaseModel):
    """Attempts and accepts under one outer-loop strategy version (--outer-every)."""

    version: int
    source: str = ""
    from_iteration: int = 0
    attempts: int = 0
    accepted: int = 0


class Scores(BaseModel):
    experiment: str
    unit: str
    direction: str
    seed: Row | None = None
    rows: list[Row] = Field(default_factory=list)  # accepted winners, in acceptance order
    best_commit: str | None = None
    specialists: dict[str, str] = Field(default_factory=dict)  # case -> commit holding it
    usage: UsageTotals = Field(default_factory=UsageTotals)
    counts: Counts = Field(default_factory=Counts)
    last_iteration: int = 0
    drift: list[Drift] = Field(default_factory=list)
    # full hash of HEAD when seed.py reset this experiment: older Accept commits are history,
    # not winners to restore into this scoreboard
    reset_at: str | None = None
    rollbacks: list[Rollback] = Field(default_factory=list)
    review: ReviewStats = Field(default_factory=ReviewStats)
    strategies: list[StrategyRate] = Field(default_factory=list)  # the outer loop's versions
    models: dict[str, ModelStats] = Field(default_factory=dict)  # by model name

    def count_model(self, model: str, status: str, usage: Usage, fix: bool = False) -> None:
        """One request of `model` (a proposal, or a fix with `fix`) and what it spent."""
        stats = self.models.setdefault(model, ModelStats())
        stats.fixes += fix
        stats.requests += not fix
        stats.accepted += status.startswith("accepted")
        stats.usage.add(usage)

    def row(self, commit: str) -> Row | None:
        if self.seed and commit == self.seed.commit:
            return self.seed
        return next((r for r in self.rows if r.commit == commit), None)

    @property
    def best(self) -> Row | None:
        return self.row(self.best_commit) if self.best_commit else self.seed

    def holder(self, case: str) -> str | None:
        """Commit holding a case: its specialist, else the overall best."""
        return self.specialists.get(case, self.best_commit)

    def render(self) -> str:
        return render(self)


def named_metrics(info: dict[str, Any]) -> dict[str, float]:
    """The candidate's named metrics (medians) from an EvalResult's info, if it has any:
    generic mode's primary, built-in (wall_seconds, cpu_seconds, peak_rss_mb) and
    declared metrics (ratchetloop.generic.constraints)."""
    found = (info.get("metrics") or {}).get("candidate") or {}
    return {str(k): float(v) for k, v in found.items() if isinstance(v, int | float)}


def metrics_text(metrics: dict[str, float]) -> str:
    """`name=value` pairs, six significant digits, the primary ("metric") left out."""
    return ", ".join(f"{k}={v:.6g}" for k, v in metrics.items() if k != "metric")


SUM_LABEL = "Median (suite sum)"  # per timing round the cases' scores are summed
WIN_LABEL = "Win vs seed*"  # explained under the table


def _better_first(scores: Scores) -> bool:
    return scores.direction == "lower_is_better"


def _fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.2f} ({unit})"


def _win(seed: float | None, score: float, lower: bool) -> str:
    if not seed or not score:
        return "n/a"
    return f"x{(seed / score) if lower else (score / seed):.3f}"


def render(scores: Scores) -> str:
    """Deterministic: the same SCORES.json always renders the same SCORES.md."""
    lower = _better_first(scores)
    unit = scores.unit
    seed = scores.seed.score if scores.seed else None
    best = scores.best
    u = scores.usage
    lines = [f"# {scores.experiment} scoreboard", ""]
    lines.append(f"- current best (median of the suite sum): "
                 f"{_fmt(best.score if best else None, unit)}"
                 + (f" (commit {best.commit})" if best and best.kind != "seed" else ""))
    if scores.rollbacks:
        rb = scores.rollbacks[-1]
        lines.append(f"- rolled back to {rb.to} at {rb.timestamp} (from {rb.previous}):"
                     " the incumbent every candidate is timed against")
    lines.append(f"- seed baseline: {_fmt(seed, unit)}")
    for case, commit in sorted(scores.specialists.items()):
        row = scores.row(commit)
        if row and case in row.case_scores:
            lines.append(f"- best {case} specialist: {_fmt(row.case_scores[case], unit)}"
                         f" (commit {commit})")
    lines.append(
        f"- cumulative usage: {u.total_tokens} total tokens (prompt {u.prompt_tokens},"
        f" completion {u.completion_tokens}, cached prompt {u.cached_prompt_tokens}),"
        f" estimated cost {u.cost_text()}"
    )
    c = scores.counts
    near = f", {c.near_duplicates} of them near (--novelty)" if c.near_duplicates else ""
    lines.append(f"- attempts: {c.attempts} (accepted {c.accepted}, rejected {c.rejected},"
                 f" failed {c.failed}, duplicates skipped {c.duplicates}{near})")
    if scores.review.reviews:
        lines.append(scores.review.line())
    if scores.drift:
        d = scores.drift[-1]
        lines.append(f"- drift check (iteration {d.iteration}): best vs seed measured now,"
                     f" {times(1 / d.ratio if lower else d.ratio)} better")
    named = any(r.metrics for r in [*scores.rows, *([scores.seed] if scores.seed else [])])
    lines += ["", f"| Timestamp | Model | {SUM_LABEL} | Seed | {WIN_LABEL} | Commit | Notes |"
              + (" Metrics |" if named else ""), "|---|---|---|---|---|---|---|"
              + ("---|" if named else "")]
    ordered = sorted(scores.rows, key=lambda r: (r.score if lower else -r.score, r.iteration))
    for r in ordered:
        lines.append(_row_line(r, seed, unit, lower, _label(scores, r), named))
    if scores.seed:
        lines.append(_row_line(scores.seed, seed, unit, lower, "seeded baseline winner", named))
        lines += ["", f"{WIN_LABEL}: the seed's median, timed alone on {scores.seed.timestamp},"
                      " over the row's, timed when it was accepted: not side by side (the"
                      " drift check is; the bracket after a note is its interval against the"
                      " incumbent it beat, timed side by side)."]
    if len(scores.models) > 1:
        lines += models_table(scores.models)
    if scores.specialists:
        lines += ["", "## Per-case specialists", "",
                  f"| Case | Median | Seed case | {WIN_LABEL} | Commit | Notes |",
                  "|---|---|---|---|---|---|"]
        for case, commit in sorted(scores.specialists.items()):
            row = scores.row(commit)
            if row is None or case not in row.case_scores:
                continue
            seed_case = scores.seed.case_scores.get(case) if scores.seed else None
            score = row.case_scores[case]
            lines.append(f"| {case} | {_fmt(score, unit)} | {_fmt(seed_case, unit)} |"
                         f" {_win(seed_case, score, lower)} | {commit} |"
                         f" best {case} specialist: {_cell(row.note)} |")
    if scores.strategies:
        lines += strategies_table(scores.strategies)
    return "\n".join(lines) + "\n"


def strategies_table(versions: list[StrategyRate]) -> list[str]:
    """Attempts and accept rate under each outer-loop strategy version."""
    lines = ["", "## Accept rate per strategy version (outer loop, STRATEGY.md)", "",
             "| Version | From iteration | Source | Attempts | Accepted | Accept rate |",
             "|---|---|---|---|---|---|"]
    for v in versions:
        rate = f"{v.accepted / v.attempts:.0%}" if v.attempts else "n/a"
        lines.append(f"| {v.version} | {v.from_iteration} | {_cell(v.source)} | {v.attempts} |"
                     f" {v.accepted} | {rate} |")
    return lines


def models_table(models: dict[str, ModelStats]) -> list[str]:
    """Per model: requests, accepts, fixes, tokens and cost (fixes included)."""
    lines = ["", "## Models", "", "| Model | Requests | Accepted | Accept rate | Fix requests"
             " | Tokens | Cost |", "|---|---|---|---|---|---|---|"]
    for name, m in sorted(models.items(), key=lambda kv: (-kv[1].requests, kv[0])):
        rate = f"{m.accepted / m.requests:.0%}" if m.requests else "n/a"
        lines.append(f"| {_cell(name)} | {m.requests} | {m.accepted} | {rate} | {m.fixes} |"
                     f" {m.usage.total_tokens} | {m.usage.cost_text()} |")
    return lines


def _label(scores: Scores, row: Row) -> str:
    if row.commit == scores.best_commit:
        return "best winner"
    if row.kind == "best":
        return "former best winner"
    return "accepted nonbest" + (f" ({', '.join(row.cases_won)})" if row.cases_won else "")


def _row_line(r: Row, seed: float | None, unit: str, lower: bool, label: str,
              with_metrics: bool = False) -> str:
    ci = f" [{_ci_text(r.ci, lower)} vs incumbent]" if r.ci and all(r.ci) else ""
    return (f"| {r.timestamp} | {r.model} | {_fmt(r.score, unit)} | {_fmt(seed, unit)} |"
            f" {_win(seed, r.score, lower)} | {r.commit} | {label}: {_cell(r.note)}{ci} |"
            + (f" {_cell(metrics_text(r.metrics)) or '-'} |" if with_metrics else ""))


def _ci_text(ci: tuple[float, float], lower: bool) -> str:
    """The interval of the gain (>1 is better) from the interval of candidate/incumbent."""
    low, high = (1 / ci[1], 1 / ci[0]) if lower else ci
    return f"x{low:.3f}..x{high:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def load(folder: Path, experiment: str, unit: str, direction: str) -> Scores:
    path = folder / "SCORES.json"
    if path.exists():
        return read_model(path, Scores)
    return Scores(experiment=experiment, unit=unit, direction=direction)


def save(folder: Path, scores: Scores) -> None:
    atomic_write_json(folder / "SCORES.json", scores)
    atomic_write_text(folder / "SCORES.md", render(scores), durable=False)
