"""What a person watching the loop sees: a live status line, an outcome per iteration, a summary.

Also the one-line error for user-fixable problems (`run_cli_guarded`), shared by the CLI and
experiments' seed.py files. Nothing heavy is imported at module level: the CLI imports this
module for every command, including `--help` (rich is imported where something is printed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import RatchetError
from .fmt import times

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.table import Table

    from .experiment import Experiment
    from .loop import Outcome, Summary
    from .scores import Scores
    from .status import TimingProgress
    from .views import Section

TIMING_SAVE_SECONDS = 0.5  # status.json at most this often for timing progress alone

STYLE = {"accepted_best": "bold green", "accepted_nonbest": "green", "rejected": "yellow",
         "failed": "red", "duplicate": "dim", "interrupted": "magenta"}


def style_of(status: object) -> str:
    """A rich style for any status, also one this version does not know (a newer run's,
    or a hand-edited attempt.json): never an empty `[]` tag, which rich cannot parse."""
    return STYLE.get(status, "default") if isinstance(status, str) else "default"


def run_cli_guarded(fn: Callable[[], Any]) -> Any:
    """Turn user-fixable errors into one line on stderr and exit code 2."""
    try:
        return fn()
    except RatchetError as exc:
        from rich.markup import escape  # the message may quote a model's or a user's text

        _stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                        soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _stderr().print("interrupted")
        sys.exit(130)


def _stderr() -> Console:
    """A stderr console, made only when there is something to say."""
    from rich.console import Console

    return Console(stderr=True)


class LiveReporter:
    """The run as a person watches it, and as `ratchet status` reads it.

    On a terminal: a live panel (rich Live, refreshed 4x a second) with elapsed time,
    iteration k/N, the phase, the paired timing's rounds done / max with the running ratio
    and CI, best so far, tokens and cost, and an ETA; each outcome is printed above it.
    Piped: one plain line per iteration (no colour, no wrapping, no live panel). Every
    phase change also rewrites .ratchet.status.json (status.py). Text a model wrote (notes,
    failure messages) is only ever shown as plain text, never read as markup.
    """

    def __init__(self, console: Console, exp: Experiment, proposer: str, total: int, *,
                 until: int | None = None) -> None:
        from .status import RunStatus

        self.console, self.exp, self.proposer = console, exp, proposer
        self.total, self.until = total, until  # N more, or up to attempt `until` in all
        self.tty = console.is_terminal
        self.state = RunStatus(experiment=exp.root.name, proposer=proposer, total=total)
        self.first: int | None = None  # the first attempt number of this run
        self.started = time.monotonic()
        self.iteration_started = self.started
        self.durations: list[float] = []
        self.live: Live | None = None
        self.saved = 0.0  # when status.json was last written

    def __enter__(self) -> LiveReporter:
        self._save()
        if self.tty:
            from rich.live import Live

            # stray prints (a benchmark-lock notice on stderr) go above the panel, not into it
            self.live = Live(console=self.console, get_renderable=self.panel, transient=True,
                             refresh_per_second=4)
            self.live.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live is not None:
            self.live.stop()
        if self.state.state == "running":  # finished() was not reached
            self.finished("interrupted (Ctrl-C)" if et is KeyboardInterrupt else
                          f"stopped by an error: {e}" if e is not None else "stopped")

    def finished(self, reason: str) -> None:
        """The run is over: status.json says when and why."""
        self.state.state, self.state.stop_reason = "finished", reason
        self.state.stopped, self.state.phase, self.state.timing = time.time(), "stopped", None
        self._save()

    def _read_scores(self) -> None:
        from . import scores as scores_mod

        try:
            sc = scores_mod.load(self.exp.root, self.exp.name, self.exp.unit, self.exp.direction)
        except RatchetError:
            return  # the loop itself says what is wrong with the file
        self.state.best = best_text(sc, self.exp)
        self.state.tokens, self.state.cost = sc.usage.total_tokens, sc.usage.cost_text()

    def _save(self) -> None:
        self.saved = time.monotonic()
        try:
            self.state.save(self.exp.root)
        except OSError:
            pass  # a view: a full disk must not stop the run (the state files will say so)

    # ------------------------------------------------------------------ reporter events

    def phase(self, iteration: int, name: str) -> None:
        if iteration and iteration != self.state.iteration:  # a new attempt starts
            if self.first is None or iteration < self.first:  # --parallel: in any order
                self.first = iteration
                if self.until is not None:
                    self.state.total = max(1, self.until - iteration + 1)
            self.state.iteration, self.state.k = iteration, iteration - self.first + 1
            self.iteration_started = time.monotonic()
            if not self.state.done:  # best and usage so far: the seed's, a resumed run's
                self._read_scores()
        self.state.phase, self.state.timing = name, None
        self._save()

    def timing(self, iteration: int, progress: TimingProgress) -> None:
        """Paired timing went one batch further (rounds done, running ratio and CI)."""
        self.state.timing = progress
        if time.monotonic() - self.saved >= TIMING_SAVE_SECONDS:  # the panel shows every one
            self._save()

    def outcome(self, o: Outcome, scores: Scores) -> None:
        from rich.text import Text

        self.durations.append(time.monotonic() - self.iteration_started)
        st = self.state
        st.done += 1
        st.best = best_text(scores, self.exp)
        st.tokens, st.cost = scores.usage.total_tokens, scores.usage.cost_text()
        st.timing = None
        self._save()
        status = str(o.status) + (f" ({o.failure_kind})" if o.failure_kind else "")
        what = one_line(o.message)
        if o.accepted and o.ratio and o.score is not None:
            gain = 1 / o.ratio if self.exp.lower_is_better else o.ratio
            what = (f"{o.score:.4g}{self.exp.unit}, {times(gain)} vs incumbent,"
                    f" commit {o.commit}")
        note = one_line(o.note)
        if not self.tty:
            # attempts done of those planned: under --parallel they end out of order
            fields = [f"#{o.iteration} [{st.done}/{st.total}] {status}", what,
                      f"best {st.best}", f"{st.tokens} tokens, {st.cost}",
                      f"elapsed {clock_text(time.monotonic() - self.started)}",
                      f"note: {note}" if note else ""]
            self.console.out(" | ".join(f for f in fields if f), highlight=False)
            return
        line = Text.assemble((f"#{o.iteration} {status}", style_of(o.status)), " ", what)
        if note:
            line.append(f" ({note})", style="dim")
        self.console.print(line, highlight=False)

    def message(self, text: str) -> None:
        """A line from the loop, in rich markup (the loop escapes what it quotes)."""
        from rich.errors import MarkupError
        from rich.text import Text

        try:
            rendered = Text.from_markup(text)
        except MarkupError:  # never let a stray bracket end a run
            rendered = Text(text)
        if self.tty:
            self.console.print(rendered, highlight=False)
        else:
            self.console.out(rendered.plain, highlight=False)

    # ------------------------------------------------------------------ the live panel

    def eta(self) -> float | None:
        """Seconds until the planned iterations are done, at this run's pace so far."""
        if not self.durations:
            return None
        remaining = max(0, self.state.total - self.state.done)
        pace = sum(self.durations) / len(self.durations)
        current = time.monotonic() - self.iteration_started if self.state.iteration else 0.0
        return max(0.0, pace * remaining - current) if remaining else 0.0

    def panel(self) -> RenderableType:
        """What the terminal shows under the printed outcomes, rebuilt at every refresh."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        st = self.state
        where = f"iteration {st.k}/{st.total}" if st.iteration else "setup"
        eta = self.eta()
        head = Text.assemble((where, "bold"), f" | {self.proposer} | ", (st.phase, "cyan"),
                             f" | elapsed {clock_text(time.monotonic() - self.started)}")
        if eta is not None:
            head.append(f" | ETA {clock_text(eta)}")
        rows: list[RenderableType] = [head]
        t = st.timing
        if t is not None:
            grid = Table.grid(padding=(0, 1))
            grid.add_row("timing", ProgressBar(total=max(t.max_rounds, 1),
                                               completed=min(t.rounds, t.max_rounds), width=24),
                         Text(timing_words(t)))
            rows.append(grid)
        rows.append(Text(f"best {st.best or 'seed'} | {st.tokens} tokens, {st.cost or '$0'}",
                         style="dim"))
        return Group(*rows)


def timing_words(t: TimingProgress) -> str:
    text = f"{t.rounds}/{t.max_rounds} rounds"
    if t.ratio is not None:
        text += f", ratio {t.ratio:.3f}"
        if t.ci_low is not None and t.ci_high is not None:
            text += f" [{t.ci_low:.3f}, {t.ci_high:.3f}]"
    return text + (f" ({t.verdict})" if t.verdict else "")


def best_text(scores: Scores, exp: Experiment) -> str:
    best, seed = scores.best, scores.seed
    if best is None:
        return ""
    text = f"{best.score:.4g}{exp.unit}"
    if seed is not None and best.commit != "seed" and best.score and seed.score:
        win = seed.score / best.score if exp.lower_is_better else best.score / seed.score
        text += f" ({times(win)} vs seed, commit {best.commit})"
    return text


def one_line(text: object) -> str:
    """Model text on one line: newlines and runs of spaces collapsed."""
    return " ".join(str(text or "").split())


def clock_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def print_summary(console: Console, exp: Experiment, summary: Summary) -> None:
    """The end of a run; piped, plain lines (the stop reason may quote model text)."""
    from rich.text import Text

    counts: dict[str, int] = {}
    for o in summary.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines = [", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no attempts"]
    if summary.best and summary.seed:
        b, s = summary.best, summary.seed
        win = s.score / b.score if exp.lower_is_better else b.score / s.score
        lines.append(f"best {b.score:.2f} {exp.unit} (commit {b.commit}) vs seed"
                     f" {s.score:.2f} {exp.unit} (timed alone on {s.timestamp}, not side by"
                     f" side): x{win:.3f}")
    if summary.usage:
        lines.append(f"usage: {summary.usage.total_tokens} tokens, {summary.usage.cost_text()}")
    lines.append(f"scoreboard: {exp.path('SCORES.md')}  memory: {exp.path('MEMORY.md')}")
    title = f"{exp.name}: {one_line(summary.stop_reason)}"
    if not console.is_terminal:
        for line in [f"== {title} ==", *lines]:
            console.out(line, highlight=False)
        return
    console.rule(Text(title))
    for line in lines:
        console.print(Text(line), highlight=False)


def history_table(exp: Experiment, last: int) -> Table:
    """Every attempt as a table (imports here: this module loads for every CLI command)."""
    from rich.table import Table
    from rich.text import Text

    from .runs import attempts

    table = Table(title=f"{exp.name} attempts")
    for col in ("#", "time", "model", "status", "score", "note / failure"):
        table.add_column(col)
    for a in attempts(exp.root)[-last:]:
        score, status = a.get("score"), a.get("status")
        table.add_row(str(a.get("iteration")), str(a.get("timestamp", "")),
                      str(a.get("model", "")), Text(str(status), style=style_of(status)),
                      f"{score:.2f}" if isinstance(score, (int, float)) else "",
                      Text(str(a.get("message") or a.get("note") or "")))
    return table


def print_sections(console: Console, sections: list[Section]) -> None:
    """`ratchet show` on a terminal: a rule per section, code and diffs highlighted, the
    rest (model text included) as plain Text, never as markup."""
    from rich.syntax import Syntax
    from rich.text import Text

    for s in sections:
        console.rule(Text(s.title), align="left")
        if s.kind == "code":
            console.print(Syntax(s.body, s.language or "text", word_wrap=True))
        elif s.kind == "diff":
            console.print(Syntax(s.body, "diff", word_wrap=True))
        else:
            console.print(Text(s.body), highlight=False)
