"""What a person sees during and after a run: model text is never markup, piped output is
one plain line per iteration, the terminal view shows progress, timing and an ETA."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ITERATIVE, reply, run_ratchet, slow_fib, write_replay
from rich.console import Console

from ratchetloop import experiment as experiment_mod
from ratchetloop.cli import main
from ratchetloop.display import LiveReporter
from ratchetloop.loop import Outcome
from ratchetloop.scores import Row, Scores
from ratchetloop.status import TimingProgress

NOTE = "[/] keep a[i]"
ANSI = re.compile(r"\x1b\[")


CRASH = 'def fib(n):\n    raise ValueError("[/] broken a[i]")\n'


def script(folder: Path, name: str = "replay.json") -> str:
    """Three attempts: a winner whose note is markup-like, a crash whose failure message
    quotes the candidate's exception (on the old code this one crashed the run with a
    MarkupError), and a rejected one."""
    return write_replay(folder.parent.parent / name, [
        reply(ITERATIVE, note=NOTE),
        reply(CRASH, note="raise [/]"),
        reply(slow_fib(4), note="slower [red]on purpose[/red] b[j]"),
    ])


def check_model_text_survives(out: str) -> None:
    assert NOTE in out, out
    assert "ValueError: [/] broken a[i]" in out, out
    assert "slower [red]on purpose[/red] b[j]" in out, out


def test_markup_in_model_text_through_the_cli_runner(fib: Path) -> None:
    """The run, history, best and show print the note exactly; no MarkupError."""
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(fib), "--model", script(fib), "--loop", "3"])
    assert result.exit_code == 0, (result.output, result.exception)
    check_model_text_survives(result.output)
    history = runner.invoke(main, ["history", str(fib)])
    assert history.exit_code == 0, history.exception
    assert NOTE in history.output
    exported = runner.invoke(main, ["history", str(fib), "--json"])
    assert exported.exit_code == 0 and "slower [red]on purpose[/red] b[j]" in exported.output
    best = runner.invoke(main, ["best", str(fib)])
    assert best.exit_code == 0 and NOTE in best.output, best.exception
    shown = runner.invoke(main, ["show", str(fib), "1"])
    assert shown.exit_code == 0 and f"Note: {NOTE}" in shown.output, shown.exception


def test_piped_run_is_one_plain_line_per_iteration(fib: Path) -> None:
    """A real subprocess with stdout piped: no ANSI codes, no wrapping, one line each,
    carrying k/N, the status, best so far, tokens/cost, elapsed time and the note."""
    proc = run_ratchet("run", str(fib), "--model", script(fib), "--loop", "3", cwd=fib)
    assert proc.returncode == 0, proc.stderr
    assert not ANSI.search(proc.stdout), proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("#")]
    assert [ln.split()[:2] for ln in lines] == [["#1", "[1/3]"], ["#2", "[2/3]"],
                                                ["#3", "[3/3]"]], proc.stdout
    assert "accepted_best" in lines[0] and lines[0].endswith(f"note: {NOTE}")
    assert "failed (validation_error) | crash: ValueError: [/] broken a[i] |" in lines[1]
    assert "rejected" in lines[2] and lines[2].endswith("note: slower [red]on purpose[/red] b[j]")
    for line in lines:
        assert "best " in line and "tokens" in line and "elapsed 0:" in line
    assert "Traceback" not in proc.stderr
    # the scoreboard path is one line too: nothing wraps at 80 columns when piped
    assert any(ln.startswith("scoreboard: ") and ln.endswith("MEMORY.md")
               for ln in proc.stdout.splitlines()), proc.stdout


def test_history_of_a_note_that_closes_nothing_used_to_crash(fib: Path) -> None:
    """The reported failure: `[/]` in a note made `ratchet history` raise MarkupError."""
    runs = fib / "runs" / "0001"
    runs.mkdir(parents=True)
    (runs / "attempt.json").write_text(
        '{"iteration": 1, "status": "rejected", "note": "[/] keep a[i]", "message": ""}')
    out = CliRunner().invoke(main, ["history", str(fib)])
    assert out.exit_code == 0, out.exception
    assert "[/] keep a[i]" in out.output


# ------------------------------------------------------------------ the reporter itself


def _scores(best: float | None = None) -> Scores:
    sc = Scores(experiment="fib", unit="us", direction="lower_is_better")
    sc.seed = Row(timestamp="t", model="seed", kind="seed", score=100.0, commit="seed",
                  note="naive seed")
    if best is not None:
        sc.rows.append(Row(timestamp="t", model="m", kind="best", score=best, commit="abc1234",
                           note="x", iteration=1))
        sc.best_commit = "abc1234"
    sc.usage.prompt_tokens, sc.usage.completion_tokens, sc.usage.cost_usd = 1000, 200, 0.25
    return sc


def _render(reporter: LiveReporter) -> str:
    out = Console(record=True, width=200, file=io.StringIO())
    out.print(reporter.panel())
    return out.export_text()


def test_terminal_view_shows_progress_timing_best_usage_and_eta(fib: Path) -> None:
    exp = experiment_mod.load(str(fib))
    term = Console(file=io.StringIO(), force_terminal=True, width=120)
    reporter = LiveReporter(term, exp, "replay", 4)
    reporter.live = None  # drive it by hand: the panel is what Live would refresh
    reporter.phase(0, "measuring seed baseline")
    assert "setup" in _render(reporter) and "ETA" not in _render(reporter)
    reporter.phase(7, "asking replay")  # a resumed run: attempt #7 is its first
    reporter.phase(7, "evaluating (build, validate, time)")
    reporter.timing(7, TimingProgress(16, 40, 0.8, 0.7, 0.9, "unsure"))
    text = _render(reporter)
    assert "iteration 1/4" in text and "evaluating" in text and "elapsed 0:00:0" in text
    assert "16/40 rounds, ratio 0.800 [0.700, 0.900] (unsure)" in text, text
    reporter.outcome(Outcome(iteration=7, status="accepted_best", note=NOTE, score=50.0,
                             ratio=0.5, commit="abc1234"), _scores(50.0))
    reporter.phase(8, "asking replay")
    text = _render(reporter)
    assert "iteration 2/4" in text and "ETA 0:" in text, text
    assert "timing" not in text  # the new attempt has not started timing
    assert "best 50us (x2.000 vs seed, commit abc1234)" in text
    assert "1200 tokens, $0.250000" in text
    printed = term.file.getvalue()  # type: ignore[attr-defined]
    assert NOTE in re.sub(r"\x1b\[[0-9;]*m", "", printed)


def test_unknown_status_and_stray_markup_in_messages_never_crash(fib: Path) -> None:
    exp = experiment_mod.load(str(fib))
    out = io.StringIO()
    reporter = LiveReporter(Console(file=out, width=60), exp, "replay", 2)
    reporter.phase(1, "asking")
    reporter.message("[yellow]closing [/] twice[/]")  # bad markup from somewhere: shown as is
    reporter.outcome(Outcome(iteration=1, status="brand_new_status",  # type: ignore[arg-type]
                             note="multi\nline   note " + "z" * 120, message="a[i]\nb"),
                     _scores())
    lines = out.getvalue().splitlines()
    assert lines[0] == "[yellow]closing [/] twice[/]"
    assert len(lines) == 2 and lines[1].startswith("#1 [1/2] brand_new_status | a[i] b |")
    assert lines[1].endswith("note: multi line note " + "z" * 120)  # one line, not wrapped


def test_status_file_follows_the_reporter(fib: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every phase change rewrites .ratchet.status.json (timing progress at most every
    TIMING_SAVE_SECONDS, here 0); finishing says when and why."""
    from ratchetloop import display
    from ratchetloop.status import read_status

    monkeypatch.setattr(display, "TIMING_SAVE_SECONDS", 0.0)

    exp = experiment_mod.load(str(fib))
    with LiveReporter(Console(file=io.StringIO()), exp, "replay", 3) as reporter:
        reporter.phase(1, "asking replay")
        st = read_status(fib)
        assert st is not None and st["state"] == "running" and st["k"] == 1
        assert st["phase"] == "asking replay" and st["total"] == 3
        reporter.timing(1, TimingProgress(8, 40, 0.9, 0.8, 1.0, "unsure"))
        assert read_status(fib)["timing"]["rounds"] == 8  # type: ignore[index]
        reporter.finished("completed 1 iteration")
    st = read_status(fib)
    assert st is not None and st["state"] == "finished"
    assert st["stop_reason"] == "completed 1 iteration" and st["stopped"] >= st["started"]


def test_an_error_leaving_the_reporter_is_recorded_as_the_stop(fib: Path) -> None:
    from ratchetloop.status import read_status

    exp = experiment_mod.load(str(fib))
    with pytest.raises(KeyboardInterrupt):
        with LiveReporter(Console(file=io.StringIO()), exp, "replay", 3) as reporter:
            reporter.phase(1, "asking replay")
            raise KeyboardInterrupt
    st = read_status(fib)
    assert st is not None and st["state"] == "finished" and "Ctrl-C" in st["stop_reason"]


# ------------------------------------------------------------------ timing progress


def test_timing_progress_comes_out_of_the_sandboxed_harness(exp_repo) -> None:
    """eval.py reports each batch on the result channel; the loop hears it while timing,
    and the verdict is still the one result document."""
    from ratchetloop.evaluate import run_eval

    folder = exp_repo("fib", tweaks={"acceptance": {"min_rounds": 6, "max_rounds": 12,
                                                    "batch_rounds": 6}})
    exp = experiment_mod.load(str(folder))
    heard: list[TimingProgress] = []
    result = run_eval(exp, ITERATIVE, {"best": ITERATIVE}, seed=1, progress=heard.append)
    assert result.ok, result.failure
    assert heard, "no progress line reached the loop"
    rounds = [p.rounds for p in heard]
    assert rounds == sorted(set(rounds)) and rounds[-1] == result.rounds
    assert all(p.max_rounds == 12 for p in heard)
    assert heard[-1].ratio is not None and heard[-1].verdict in ("same", "unsure", "better",
                                                                 "worse")


def test_progress_lines_never_count_as_the_result() -> None:
    from ratchetloop.evaluate import parse_result
    from ratchetloop.sandbox import SandboxResult

    progress = b'{"progress": {"rounds": 3, "max_rounds": 6}}\n'
    result = b'{"ok": false, "failure": {"kind": "build_error", "message": "m"}}\n'

    def parsed(channel: bytes):  # noqa: ANN202
        return parse_result(SandboxResult(returncode=0, stdout="", stderr="", result=channel))

    assert parsed(progress + result).failure.kind == "build_error"  # type: ignore[union-attr]
    assert parsed(progress + result + result).failure.kind == "integrity"  # type: ignore[union-attr]
    assert parsed(progress).failure.kind == "harness_error"  # type: ignore[union-attr]
