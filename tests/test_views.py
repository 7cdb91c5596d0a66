"""`ratchet show <experiment> N` and `ratchet history --json/--csv`, read back from a real run."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ITERATIVE, make_exp_repo, reply, run_ratchet, slow_fib, write_replay

from ratchetloop import views
from ratchetloop.cli import main

NOTE = 'keep a[i], "quoted" [/]'


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fib after three real attempts: #1 accepted, #2 failed (no code), #3 rejected."""
    root = tmp_path_factory.mktemp("views")
    folder = make_exp_repo(root, "fib")
    model = write_replay(root / "replay.json", [
        reply(ITERATIVE, note=NOTE), "no code at all",
        reply(slow_fib(4), note="slower, on purpose")])
    proc = run_ratchet("run", str(folder), "--model", model, "--loop", "3", cwd=folder,
                       env={"RATCHET_BENCH_LOCK": str(root / "bench.lock")})
    assert proc.returncode == 0, proc.stderr
    return folder


def test_json_export_parses_with_stable_columns(ran: Path) -> None:
    proc = run_ratchet("history", str(ran), "--json", cwd=ran)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)  # piped: valid JSON, nothing else on stdout
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert all(list(r) == list(views.COLUMNS) for r in rows)
    assert [r["status"] for r in rows] == ["accepted_best", "failed", "rejected"]
    assert rows[0]["note"] == NOTE and rows[0]["commit"] and rows[0]["ci_low"] < rows[0]["ratio"]
    assert rows[1]["failure_kind"] == "no_code" and rows[1]["score"] is None
    assert isinstance(rows[2]["seconds_total"], float) and rows[2]["prompt_tokens"] == 0


def test_csv_export_parses_and_round_trips_awkward_text(ran: Path) -> None:
    proc = run_ratchet("history", str(ran), "--csv", cwd=ran)
    assert proc.returncode == 0, proc.stderr
    reader = csv.DictReader(io.StringIO(proc.stdout))
    assert tuple(reader.fieldnames or ()) == views.COLUMNS
    rows = list(reader)
    assert len(rows) == 3 and rows[0]["note"] == NOTE  # comma, quotes, brackets intact
    assert rows[1]["status"] == "failed" and rows[1]["score"] == ""
    assert float(rows[0]["score"]) > 0
    last = CliRunner().invoke(main, ["history", str(ran), "--csv", "--last", "1"])
    assert last.exit_code == 0 and len(list(csv.DictReader(io.StringIO(last.output)))) == 1


def test_show_an_accepted_attempt_in_full(ran: Path) -> None:
    proc = run_ratchet("show", str(ran), "1", cwd=ran)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b[" not in out  # piped: plain text
    for title in ("== attempt ==", "== prompt ==", "== reply ==", "== extracted code ==",
                  "== diff against incumbent seed ==", "== security verdict ==",
                  "== decision =="):
        assert title in out, title
    assert f"note: {NOTE}" in out and "status: accepted_best" in out
    assert "+    a, b = 0, 1" in out and "-    return fib(n - 1) + fib(n - 2)" in out
    assert "overall: better" in out and "passed" in out
    assert "== log worker-candidate.log ==" in out


def test_show_diffs_against_the_incumbent_of_that_time(ran: Path) -> None:
    """Attempt 3 was timed against attempt 1's winner, not the seed."""
    winner = json.loads((ran / "runs" / "0001" / "attempt.json").read_text())["commit"]
    out = CliRunner().invoke(main, ["show", str(ran), "3"])
    assert out.exit_code == 0, out.exception
    assert f"== diff against incumbent {winner} ==" in out.output
    assert "+    for _ in range(4):" in out.output
    assert "status: rejected (not_better)" in out.output
    assert "overall: " in out.output and "rule: accept when" in out.output


def test_show_a_failed_attempt(ran: Path) -> None:
    out = CliRunner().invoke(main, ["show", str(ran), "2"])
    assert out.exit_code == 0, out.exception
    assert "status: failed (no_code)" in out.output and "no code at all" in out.output
    assert "== extracted code ==" not in out.output


def test_show_unknown_attempt_is_one_line(ran: Path) -> None:
    proc = run_ratchet("show", str(ran), "42", cwd=ran)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: fib has no attempt 42 (recorded: 1..3)"


def test_odd_and_unfinished_records_never_crash(ran: Path, tmp_path: Path) -> None:
    """Unknown statuses, wrong types and an attempt cut short are shown, not fatal."""
    repo = tmp_path / "repo"
    shutil.copytree(ran.parent.parent, repo)
    folder = repo / "experiments" / "fib"
    odd = folder / "runs" / "0004"
    shutil.copytree(folder / "runs" / "0003", odd)
    (odd / "attempt.json").write_text(json.dumps({
        "iteration": 4, "status": "interrupted_by_a_future_version", "ci": "wide",
        "usage": "lots", "seconds": [1, 2], "score": "fast", "cases_won": None,
        "brand_new_field": {"x": 1}}))
    (odd / "decision.json").write_text("[1, 2")  # not JSON: shown as it is
    unfinished = folder / "runs" / "0005"
    unfinished.mkdir()
    (unfinished / "prompt.md").write_text("the prompt of an attempt cut short")
    runner = CliRunner()
    rows = json.loads(runner.invoke(main, ["history", str(folder), "--json"]).output)
    assert rows[-1]["status"] == "interrupted_by_a_future_version"
    assert rows[-1]["ci_low"] is None and rows[-1]["score"] is None and rows[-1]["cases_won"] == []
    assert runner.invoke(main, ["history", str(folder)]).exit_code == 0
    shown = runner.invoke(main, ["show", str(folder), "4"])
    assert shown.exit_code == 0, shown.exception
    assert "interrupted_by_a_future_version" in shown.output and "[1, 2" in shown.output
    cut = runner.invoke(main, ["show", str(folder), "5"])
    assert cut.exit_code == 0, cut.exception
    assert "unfinished" in cut.output and "the prompt of an attempt cut short" in cut.output


def test_generic_experiment_show_history_and_status(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A `.ratchet/<tag>` experiment: the same views over the generic records."""
    from generic_helpers import calc_reply, make_repo

    from ratchetloop.generic.contract import MetricSpec
    from ratchetloop.generic.init import init_project

    repo = make_repo(tmp_path)
    init_project(repo, tag="calc", editable=["calc.py"], readonly=["score.py"],
                 run_command="python3 score.py",
                 metric=MetricSpec(kind="regex", pattern=r"cost=(\d+)"))
    script = tmp_path / "replies.json"
    script.write_text(json.dumps([calc_reply(4, "four [/] a[i]"), calc_reply(6, "six")]))
    monkeypatch.chdir(repo)
    runner = CliRunner()
    out = runner.invoke(main, ["run", "calc", "--model", f"replay:{script}", "--loop", "2"])
    assert out.exit_code == 0, out.output
    assert "four [/] a[i]" in out.output
    rows = json.loads(runner.invoke(main, ["history", "calc", "--json"]).output)
    assert [r["status"] for r in rows] == ["accepted_best", "rejected"]
    assert rows[0]["note"] == "four [/] a[i]" and rows[0]["score"] == 4
    shown = runner.invoke(main, ["show", "calc", "2"])
    assert shown.exit_code == 0, shown.exception
    assert f"== diff against incumbent {rows[0]['commit']} ==" in shown.output
    assert "-    return 4" in shown.output and "+    return 6" in shown.output
    status = runner.invoke(main, ["status", "calc"])
    assert status.exit_code == 0 and "completed 2 iterations" in status.output, status.output
    listing = runner.invoke(main, ["status"])
    assert listing.output.startswith("calc: not running; the last run"), listing.output


def test_show_on_a_terminal_highlights_code_and_keeps_model_text(ran: Path) -> None:
    from rich.console import Console

    from ratchetloop import experiment as experiment_mod
    from ratchetloop.display import print_sections

    term = Console(force_terminal=True, record=True, width=120, file=io.StringIO())
    print_sections(term, views.attempt_sections(experiment_mod.load(str(ran)), 1))
    text = term.export_text()
    assert f"note: {NOTE}" in text and "extracted code" in text and "a, b = 0, 1" in text
    assert "\x1b[" in term.file.getvalue()  # type: ignore[attr-defined]  # styled on a terminal
