"""What a person watching the loop sees: a live status line, an outcome per iteration, a summary.

Also the one-line error for user-fixable problems (`run_cli_guarded`), shared by the CLI and
experiments' seed.py files. Nothing heavy is imported at module level: the CLI imports this
module for every command, including `--help` (rich is imported where something is printed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import RatchetError
from .fmt import times

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .experiment import Experiment
    from .loop import Outcome, Summary
    from .scores import Scores

STYLE = {"accepted_best": "bold green", "accepted_nonbest": "green", "rejected": "yellow",
         "failed": "red", "duplicate": "dim"}


def run_cli_guarded(fn: Callable[[], Any]) -> Any:
    """Turn user-fixable errors into one line on stderr and exit code 2."""
    try:
        return fn()
    except RatchetError as exc:
        _stderr().print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _stderr().print("interrupted")
        sys.exit(130)


def _stderr() -> Console:
    """A stderr console, made only when there is something to say."""
    from rich.console import Console

    return Console(stderr=True)


class LiveReporter:
    def __init__(self, console: Console, exp: Experiment, proposer: str, total: int) -> None:
        self.console, self.exp, self.proposer, self.total = console, exp, proposer, total
        self.best_text = "best: seed"
        self.usage_text = "0 tokens"
        self.status = console.status("starting")

    def __enter__(self) -> LiveReporter:
        self.status.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.status.stop()

    def phase(self, iteration: int, name: str) -> None:
        label = f"iteration {iteration}/{self.total}" if iteration else "setup"
        self.status.update(f"[bold]{label}[/] | {self.proposer} | {name} | {self.best_text}"
                           f" | {self.usage_text}")

    def outcome(self, o: Outcome, scores: Scores) -> None:
        best, seed, unit = scores.best, scores.seed, self.exp.unit
        if best and seed:
            win = seed.score / best.score if self.exp.lower_is_better else best.score / seed.score
            self.best_text = f"best {best.score:.2f}{unit} x{win:.2f}"
        u = scores.usage
        self.usage_text = f"{u.total_tokens} tokens, {u.cost_text()}"
        what = o.message
        if o.accepted and o.ratio and o.score is not None:
            gain = 1 / o.ratio if self.exp.lower_is_better else o.ratio
            what = f"{o.score:.2f}{unit}, {times(gain)} vs incumbent, commit {o.commit}"
        self.console.print(f"[{STYLE.get(o.status, '')}]#{o.iteration} {o.status}[/] "
                           f"{what} [dim]({o.note})[/]", highlight=False)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)


def print_summary(console: Console, exp: Experiment, summary: Summary) -> None:
    counts: dict[str, int] = {}
    for o in summary.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    console.rule(f"{exp.name}: {summary.stop_reason}")
    console.print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no attempts")
    if summary.best and summary.seed:
        b, s = summary.best, summary.seed
        win = s.score / b.score if exp.lower_is_better else b.score / s.score
        console.print(f"best {b.score:.2f} {exp.unit} (commit {b.commit}) vs seed"
                      f" {s.score:.2f} {exp.unit}: x{win:.3f}")
    if summary.usage:
        console.print(f"usage: {summary.usage.total_tokens} tokens, {summary.usage.cost_text()}")
    console.print(f"scoreboard: {exp.path('SCORES.md')}  memory: {exp.path('MEMORY.md')}")


def history_table(exp: Experiment, last: int) -> Table:
    """Every attempt as a table (imports here: this module loads for every CLI command)."""
    from rich.table import Table

    from .runs import attempts

    table = Table(title=f"{exp.name} attempts")
    for col in ("#", "time", "model", "status", "score", "note / failure"):
        table.add_column(col)
    for a in attempts(exp.root)[-last:]:
        score = a.get("score")
        table.add_row(str(a.get("iteration")), a.get("timestamp", ""), a.get("model", ""),
                      f"[{STYLE.get(a.get('status', ''), '')}]{a.get('status')}[/]",
                      f"{score:.2f}" if isinstance(score, float) else "",
                      a.get("message") or a.get("note") or "")
    return table
