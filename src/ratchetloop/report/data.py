"""Everything a report shows, gathered once from the files a run leaves behind.

Sources: runs/<n>/attempt.json (every attempt), SCORES.json (seed, winners, specialists),
MEMORY.json (failure signatures), winners/<commit>/ (sources, for the diffs); in generic
mode also results.tsv when runs/ is gone. Records are read defensively: a field of the
wrong type, or a status this version does not know, is shown as it is, never a crash.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import memory as memory_mod
from .. import runs as runs_mod
from .. import scores as scores_mod
from ..errors import RatchetError
from ..experiment import Experiment
from ..views import _number, _text

DIFF_LINE_LIMIT = 600  # a winner's diff beyond this is cut (the full source is in winners/)
FAILURE_BARS = 15  # signatures shown; the rest are summed into one bar


@dataclass(frozen=True)
class Attempt:
    iteration: int
    status: str  # as recorded
    category: str  # what the plots colour by: "accepted (best)", "failed: build_error", ...
    score: float | None
    ratio: float | None
    note: str
    message: str
    model: str
    timestamp: str
    elapsed_s: float  # wall time of all attempts up to and including this one
    cost_usd: float  # cumulative known cost up to and including this one


@dataclass(frozen=True)
class BestPoint:
    """The best score from this point on (a step of the best-so-far line)."""

    iteration: int
    elapsed_s: float
    cost_usd: float
    score: float
    commit: str


@dataclass(frozen=True)
class Winner:
    iteration: int
    commit: str
    kind: str  # "best" or "nonbest" (a specialist)
    is_current_best: bool
    note: str
    model: str
    timestamp: str
    score: float
    ratio: float | None  # candidate / the incumbent it beat
    ci: tuple[float, float] | None
    cases_won: list[str]
    previous: str  # the best it is diffed against ("seed" for the first)
    diff: str | None  # unified diff against `previous`; None when a source is unavailable
    metrics: dict[str, float] = field(default_factory=dict)  # named metrics (generic mode)


@dataclass(frozen=True)
class Heatmap:
    """Per-case speedup against the seed, one row per winner or specialist."""

    rows: list[str]
    cases: list[str]
    speedup: list[list[float | None]]
    holds: list[list[bool]]  # the row's commit currently holds that case


@dataclass(frozen=True)
class FailureBar:
    signature: str
    kind: str
    count: int


@dataclass(frozen=True)
class ReportData:
    experiment: str
    mode: str  # "experiment" or "generic"
    folder: Path
    unit: str
    direction: str
    generated: str
    seed_score: float | None
    best_score: float | None
    best_commit: str | None
    counts: dict[str, int]
    usage: str
    attempts: list[Attempt]
    best_path: list[BestPoint]
    winners: list[Winner]
    heatmap: Heatmap
    failures: list[FailureBar]
    notes: list[str] = field(default_factory=list)  # caveats shown under the summary

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "lower_is_better"

    @property
    def score_label(self) -> str:
        """The score axis's title, for both renderers."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"score{unit}, {'lower' if self.lower_is_better else 'higher'} is better"

    @property
    def categories(self) -> list[str]:
        """Every category the plots colour: the attempts' and the failure bars' kinds."""
        return [a.category for a in self.attempts] + [f"failed: {b.kind}" for b in self.failures]

    @property
    def total_cost(self) -> float:
        return self.attempts[-1].cost_usd if self.attempts else 0.0


def gather(exp: Experiment) -> ReportData:
    """Read the experiment's records into one ReportData (RatchetError if there are none)."""
    sc = scores_mod.load(exp.root, exp.name, exp.unit, exp.direction)
    attempts = _attempts(exp)
    if sc.seed is None and not attempts:
        raise RatchetError(f"{exp.name} has no results yet: run `ratchet run {exp.name}`")
    lower = exp.lower_is_better
    notes = []
    if attempts and not attempts[-1].cost_usd:
        notes.append("no cost recorded: every request was free or unpriced")
    elif attempts and sc.usage.cost_usd - attempts[-1].cost_usd > 1e-9:
        notes.append(f"the cost axes count each attempt's proposal request"
                     f" (${attempts[-1].cost_usd:.4f}); the total (${sc.usage.cost_usd:.4f})"
                     " also counts fix and judge requests")
    if sc.usage.unpriced_requests:
        notes.append(f"{sc.usage.unpriced_requests} requests had no known price (cost counts 0)")
    best = sc.best
    return ReportData(
        experiment=exp.name, mode="generic" if exp.generic is not None else "experiment",
        folder=exp.root, unit=exp.unit, direction=exp.direction,
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),  # local, like the records
        seed_score=sc.seed.score if sc.seed else None,
        best_score=best.score if best else None, best_commit=sc.best_commit,
        counts=sc.counts.model_dump(), usage=_usage_text(sc.usage),
        attempts=attempts, best_path=_best_path(sc, attempts),
        winners=_winners(exp, sc), heatmap=_heatmap(exp, sc, lower),
        failures=_failures(exp, attempts), notes=notes,
    )


# ------------------------------------------------------------------ attempts

def category(status: object, failure_kind: object = None) -> str:
    """The plot category of any recorded status, known or not."""
    if not isinstance(status, str) or not status:
        return "unknown"
    if status == "accepted_best":
        return "accepted (best)"
    if status == "accepted_nonbest":
        return "accepted (specialist)"
    if status == "failed":
        return f"failed: {failure_kind}" if isinstance(failure_kind, str) and failure_kind \
            else "failed"
    return status


def _attempts(exp: Experiment) -> list[Attempt]:
    records = runs_mod.attempts(exp.root)
    if not records and exp.generic is not None:
        records = _from_results_tsv(exp.path("results.tsv"))
    out: list[Attempt] = []
    elapsed = cost = 0.0
    for position, raw in enumerate(records, start=1):
        seconds = raw.get("seconds")
        elapsed += (_num(seconds.get("total")) or 0.0) if isinstance(seconds, dict) else 0.0
        usage = raw.get("usage")
        cost += (_num(usage.get("cost_usd")) or 0.0) if isinstance(usage, dict) else 0.0
        iteration = raw.get("iteration")
        out.append(Attempt(
            iteration=iteration if isinstance(iteration, int) else position,
            status=raw["status"] if isinstance(raw.get("status"), str) else "unknown",
            category=category(raw.get("status"), raw.get("failure_kind")),
            score=_num(raw.get("score")), ratio=_num(raw.get("ratio")),
            note=_text(raw.get("note")), message=_text(raw.get("message")),
            model=_text(raw.get("model")), timestamp=_text(raw.get("timestamp")),
            elapsed_s=elapsed, cost_usd=cost))
    return sorted(out, key=lambda a: a.iteration)


def _from_results_tsv(path: Path) -> list[dict[str, Any]]:
    """Generic mode with runs/ deleted: results.tsv still says keep/discard/crash."""
    from ..generic.results import read_rows

    status = {"keep": "accepted_best", "discard": "rejected", "crash": "failed"}
    out: list[dict[str, Any]] = []
    for n, row in enumerate(read_rows(path), start=1):
        metric = row.get("metric", "")
        out.append({"iteration": n, "status": status.get(row.get("status", ""),
                                                          row.get("status", "unknown")),
                    "score": _float_or_none(metric), "note": row.get("description", ""),
                    "commit": row.get("commit")})
    return out


def _events(sc: scores_mod.Scores) -> list[scores_mod.Row | scores_mod.Rollback]:
    """Accepted rows and `ratchet rollback`s in the order they happened (a rollback makes
    an older winner the incumbent again: what later winners beat, and are diffed against)."""
    rows: list[scores_mod.Row | scores_mod.Rollback] = list(sc.rows)
    for rb in sc.rollbacks:
        at = next((i for i, r in enumerate(rows) if r.timestamp > rb.timestamp), len(rows))
        rows.insert(at, rb)
    return rows


def _best_path(sc: scores_mod.Scores, attempts: list[Attempt]) -> list[BestPoint]:
    """Seed, then every new best (or rollback) at its attempt, held to the last attempt."""
    by_iteration = {a.iteration: a for a in attempts}

    def point(iteration: int, score: float, commit: str) -> BestPoint:
        a = by_iteration.get(iteration) or next(
            (a for a in reversed(attempts) if a.iteration <= iteration), None)
        return BestPoint(iteration, a.elapsed_s if a else 0.0, a.cost_usd if a else 0.0,
                         score, commit)

    path: list[BestPoint] = []
    if sc.seed is not None:
        path.append(BestPoint(0, 0.0, 0.0, sc.seed.score, "seed"))
    for event in _events(sc):
        if isinstance(event, scores_mod.Rollback):
            row = sc.row(event.to)
            before = [a.iteration for a in attempts if a.timestamp <= event.timestamp]
            if row is not None:
                path.append(point(max(before, default=0), row.score,
                                  f"{row.commit} (rollback)"))
        elif event.kind == "best":
            path.append(point(event.iteration, event.score, event.commit))
    if path and attempts and attempts[-1].iteration > path[-1].iteration:
        last = attempts[-1]
        path.append(BestPoint(last.iteration, last.elapsed_s, last.cost_usd, path[-1].score,
                              path[-1].commit))
    return path


# ------------------------------------------------------------------ winners and diffs

def _winners(exp: Experiment, sc: scores_mod.Scores) -> list[Winner]:
    sources: dict[str, dict[str, str] | None] = {}

    def source(commit: str) -> dict[str, str] | None:
        if commit not in sources:
            sources[commit] = winner_files(exp, commit)
        return sources[commit]

    out: list[Winner] = []
    previous = "seed"
    for row in _events(sc):
        if isinstance(row, scores_mod.Rollback):
            previous = row.to
            continue
        old, new = source(previous), source(row.commit)
        diff = None if old is None or new is None else unified_diff(previous, old,
                                                                    row.commit, new)
        out.append(Winner(
            iteration=row.iteration, commit=row.commit, kind=row.kind,
            is_current_best=row.commit == sc.best_commit, note=row.note, model=row.model,
            timestamp=row.timestamp, score=row.score, ratio=row.ratio, ci=row.ci,
            cases_won=list(row.cases_won), previous=previous, diff=diff,
            metrics=dict(row.metrics)))
        if row.kind == "best":
            previous = row.commit
    return out


def winner_files(exp: Experiment, commit: str) -> dict[str, str] | None:
    """A winner's source files (name -> text), or None when they cannot be found."""
    try:
        if exp.generic is not None:
            from ..generic.winners import winner_files as generic_files

            return generic_files(exp, commit)
        from ..winners import winner_source

        return {Path(exp.target.file).name: winner_source(exp, commit)}
    except (RatchetError, OSError, UnicodeDecodeError, ValueError):
        return None


def unified_diff(old_name: str, old: dict[str, str], new_name: str,
                 new: dict[str, str]) -> str:
    lines: list[str] = []
    for name in sorted(set(old) | set(new)):
        lines += difflib.unified_diff(
            old.get(name, "").splitlines(keepends=True), new.get(name, "").splitlines(
                keepends=True), fromfile=f"{old_name}/{name}", tofile=f"{new_name}/{name}")
    lines = [ln if ln.endswith("\n") else ln + "\n" for ln in lines]
    if len(lines) > DIFF_LINE_LIMIT:
        cut = len(lines) - DIFF_LINE_LIMIT
        lines = lines[:DIFF_LINE_LIMIT] + [f"... ({cut} more lines; see winners/{new_name}/)\n"]
    return "".join(lines)


# ------------------------------------------------------------------ cases and failures

def _heatmap(exp: Experiment, sc: scores_mod.Scores, lower: bool) -> Heatmap:
    seed_cases = sc.seed.case_scores if sc.seed else {}
    declared = [c.name for c in exp.cases]
    seen = {c for r in sc.rows for c in r.case_scores} | set(seed_cases)
    cases = [c for c in declared if c in seen] + sorted(seen - set(declared))
    rows, speedup, holds = [], [], []
    for r in sc.rows:
        role = ("best" if r.commit == sc.best_commit
                else "specialist" if r.kind == "nonbest" else "former best")
        rows.append(f"#{r.iteration} {r.commit[:8]} ({role})")
        speedup.append([_gain(seed_cases.get(c), r.case_scores.get(c), lower) for c in cases])
        holds.append([sc.holder(case) == r.commit for case in cases])
    return Heatmap(rows=rows, cases=cases, speedup=speedup, holds=holds)


def _failures(exp: Experiment, attempts: list[Attempt]) -> list[FailureBar]:
    """Failure signatures (from MEMORY.json, grouped by cause), most frequent first."""
    try:
        groups = memory_mod.load(exp.root).failing.values()
        bars = [FailureBar(g.signature, g.kind, g.count) for g in groups]
    except RatchetError:
        bars = []
    if not bars:  # no memory file (or an unreadable one): group what the attempts say
        counted: dict[str, FailureBar] = {}
        for a in attempts:
            if a.status == "failed":
                kind = a.category.removeprefix("failed: ")
                sig = memory_mod.signature(kind, a.message)
                old = counted.get(sig)
                counted[sig] = FailureBar(sig, kind, (old.count if old else 0) + 1)
        bars = list(counted.values())
    bars.sort(key=lambda b: (-b.count, b.signature))
    if len(bars) > FAILURE_BARS:
        rest = bars[FAILURE_BARS - 1:]
        bars = bars[:FAILURE_BARS - 1] + [FailureBar(
            f"({len(rest)} other signatures)", "other", sum(b.count for b in rest))]
    return bars


# ------------------------------------------------------------------ helpers

def _gain(base: float | None, value: float | None, lower: bool) -> float | None:
    """How many times better than the seed (>1 is better), whatever the direction."""
    if base is None or value is None or base <= 0 or value <= 0:
        return None
    return base / value if lower else value / base


def _usage_text(u: scores_mod.UsageTotals) -> str:
    return (f"{u.total_tokens} tokens (prompt {u.prompt_tokens}, completion"
            f" {u.completion_tokens}, cached {u.cached_prompt_tokens}), cost {u.cost_text()}")


def _num(value: object) -> float | None:
    """A finite number as a float, else None (views._number, which keeps ints as ints)."""
    number = _number(value)
    return None if number is None else float(number)


def _float_or_none(text: str) -> float | None:
    try:
        return _num(float(text))
    except ValueError:
        return None

