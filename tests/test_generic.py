"""Generic mode end to end: a real git repo, a real command in the sandbox, replayed replies."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from generic_helpers import CALC, calc_reply, git, make_repo, snapshot

from ratchetloop import experiment as experiment_mod
from ratchetloop.cli import main
from ratchetloop.errors import RatchetError
from ratchetloop.generic import session_parts
from ratchetloop.generic.cli import init_command
from ratchetloop.generic.contract import MetricSpec
from ratchetloop.generic.init import init_project
from ratchetloop.generic.results import read_rows
from ratchetloop.loop import Options, QuietReporter, run_loop
from ratchetloop.proposers.replay import ReplayProposer

REGEX = r"cost=(\d+)"


@pytest.fixture(autouse=True)
def private_bench_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic metrics need no host-wide timing lock; don't queue behind benchmarks."""
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))


def setup(tmp_path: Path, **kw: object) -> tuple[Path, experiment_mod.Experiment]:
    repo = make_repo(tmp_path)
    folder = init_project(repo, tag="calc", editable=["calc.py"], readonly=["score.py"],
                          run_command="python3 score.py",
                          metric=MetricSpec(kind="regex", pattern=REGEX), **kw)  # type: ignore
    return repo, experiment_mod.load(folder)


def run(exp: experiment_mod.Experiment, replies: list[str], n: int):  # noqa: ANN201
    reporter, workspace = session_parts(exp, QuietReporter())
    proposer = ReplayProposer(replies)
    return run_loop(exp, proposer, Options(iterations=n), reporter, workspace), proposer


def test_keeps_better_rejects_worse_and_outside_edits_without_touching_the_user(tmp_path):
    repo, exp = setup(tmp_path)
    before = snapshot(repo)
    search = ("calc.py\n<<<<<<< SEARCH\n    return 5\n=======\n    return 2\n>>>>>>> REPLACE\n"
              "Note: search/replace to 2\n")
    outside = "File: score.py\n```python\nprint('cost=0')\n```\nNote: cheat on the metric\n"
    summary, proposer = run(exp, [calc_reply(5, "five"), outside, calc_reply(20, "twenty"),
                                  search], 4)
    statuses = [(o.status, o.failure_kind) for o in summary.outcomes]
    assert statuses == [("accepted_best", None), ("failed", "outside_editable"),
                        ("rejected", "not_better"), ("accepted_best", None)]
    assert summary.best is not None and summary.best.score == 2
    assert "Editable file: calc.py" in proposer.prompts[0] and "score.py" in proposer.prompts[0]
    rows = read_rows(exp.path("results.tsv"))
    assert [r["status"] for r in rows] == ["keep", "crash", "discard", "keep"]
    assert rows[0]["metric"] == "5" and rows[3]["commit"] == summary.best.commit
    assert snapshot(repo) == before  # tree, index, branch and HEAD untouched
    assert git(repo, "status", "--porcelain").strip() == "?? .ratchet/"  # state is excluded
    log = git(repo, "log", "--format=%s", "ratchet/calc")
    assert log.count("Accept calc winner") == 2
    assert "return 2" in git(repo, "show", "ratchet/calc:calc.py")

    runner = CliRunner()
    out = runner.invoke(main, ["best", str(exp.root)])
    assert out.exit_code == 0 and "+    return 2" in out.output and "ratchet/calc" in out.output
    out = runner.invoke(main, ["rollback", str(exp.root)])
    assert out.exit_code == 0, out.output
    assert (repo / "calc.py").read_text() == "def cost():\n    return 2\n"
    assert git(repo, "branch", "--show-current").strip() == "main"


def test_crash_gets_two_fix_attempts_with_the_log_tail(tmp_path):
    repo, exp = setup(tmp_path)
    broken = "File: calc.py\n```python\ndef cost():\n    return undefined_name\n```\nNote: idea\n"
    still = "File: calc.py\n```python\ndef cost():\n    return also_undefined\n```\nNote: x\n"
    summary, proposer = run(exp, [broken, still, calc_reply(3, "fixed"),  # fixed on try 2
                                  broken, still, still], 2)  # never fixed: a crash
    first, second = summary.outcomes
    assert first.status == "accepted_best" and summary.best is not None
    assert "fixed after 2 retries" in summary.best.note
    assert second.status == "failed" and second.failure_kind == "crash"
    fix_prompt = proposer.prompts[1]
    assert "NameError" in fix_prompt and "undefined_name" in fix_prompt
    rows = read_rows(exp.path("results.tsv"))
    assert [r["status"] for r in rows] == ["keep", "crash"]
    assert "fixed after 2 retries" in rows[0]["description"]
    assert "run command exited" in rows[1]["description"]


def test_constant_metric_is_decided_on_effect_size_in_three_rounds(tmp_path):
    repo, exp = setup(tmp_path)
    summary, _ = run(exp, [calc_reply(9, "nine")], 1)
    attempt = exp.path("runs", "0001", "decision.json")
    decision = json.loads(attempt.read_text())
    assert decision["overall"]["rounds"] == 3
    assert "zero variance" in decision["overall"]["reasons"][0]
    assert summary.outcomes[0].status == "accepted_best"


def test_size_rule_keeps_equal_but_simpler_and_rejects_tiny_bloated_gains(tmp_path):
    repo, exp = setup(tmp_path, acceptance={"min_effect": 0.06})
    padding = "".join(f"    unused_{i} = {i}\n" for i in range(25))
    simpler = "File: calc.py\n```python\ndef cost():\n    return 10\n```\nNote: simpler\n"
    # 10 -> 10 with one line fewer (33% of 3 lines): kept. 10 -> 9 is x1.11: better than
    # min_effect 6% but below 2 x 6%, and it adds 25 lines: rejected.
    summary, _ = run(exp, [simpler, calc_reply(9, "nine with padding", padding)], 2)
    assert summary.outcomes[0].status == "accepted_best"
    assert summary.outcomes[1].status == "rejected"
    reasons = json.loads(exp.path("runs", "0002", "decision.json").read_text())["overall"]
    assert any("size rule" in r for r in reasons["reasons"])


def test_setup_check_failure_halts_with_its_output(tmp_path):
    repo, exp = setup(tmp_path, setup_check="echo missing-dependency-xyz; exit 3")
    with pytest.raises(RatchetError, match="missing-dependency-xyz"):
        session_parts(exp, QuietReporter())


def test_branch_name_is_suffixed_when_taken_and_dirty_files_refused(tmp_path):
    repo, exp = setup(tmp_path)
    git(repo, "branch", "ratchet/calc")
    _, workspace = session_parts(exp, QuietReporter())
    assert workspace is not None and workspace.trees.branch == "ratchet/calc-2"
    (repo / "calc.py").write_text(CALC + "# local edit\n")
    with pytest.raises(RatchetError, match="uncommitted"):
        session_parts(exp, QuietReporter())


def test_init_flags_refuse_overwrite_and_force(tmp_path, monkeypatch):
    repo = make_repo(tmp_path)
    monkeypatch.chdir(repo)
    runner = CliRunner()
    args = ["init", "--tag", "t1", "--edit", "calc.py", "--read", "score.py", "--run",
            "python3 score.py", "--metric-regex", REGEX, "--lower-is-better", "--unit", "pts"]
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    data = json.loads((repo / ".ratchet/t1/experiment.json").read_text())
    assert data["generic"]["editable"] == ["calc.py"]
    assert data["generic"]["metric"] == {"kind": "regex", "pattern": REGEX, "key": None,
                                         "channel": "auto"}
    assert data["direction"] == "lower_is_better" and data["unit"] == "pts"
    for name in ("program.md", "prompt.py", "security.py"):
        assert (repo / ".ratchet/t1" / name).is_file()
    assert "/.ratchet/*/results.tsv" in (repo / ".git/info/exclude").read_text()
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(main, [*args, "--force"]).exit_code == 0
    bad = runner.invoke(main, ["init", "--tag", "t2", "--edit", "calc.py"])
    assert bad.exit_code == 2 and "--run" in bad.output
    bad = runner.invoke(main, ["init", "--tag", "t3", "--edit", "nope.py", "--run", "x",
                               "--lower-is-better"])
    assert bad.exit_code == 2 and "nope.py" in bad.output


def test_init_imports_research_json(tmp_path, monkeypatch):
    repo = make_repo(tmp_path)
    monkeypatch.chdir(repo)
    (tmp_path / "research.json").write_text(json.dumps({
        "run_command": "python3 score.py", "modifiable_files": ["calc.py"],
        "readonly_files": ["score.py"], "timeout_seconds": 42, "metric_direction": "higher",
        "tag": "imported", "no_new_dependencies": True, "setup_check": "python3 -V"}))
    out = CliRunner().invoke(main, ["init", "--from-research", str(tmp_path / "research.json")])
    assert out.exit_code == 0, out.output
    data = json.loads((repo / ".ratchet/imported/experiment.json").read_text())
    assert data["timeout_seconds"] == 42 and data["direction"] == "higher_is_better"
    g = data["generic"]
    assert (g["editable"], g["readonly"], g["setup_check"], g["no_new_dependencies"]) == (
        ["calc.py"], ["score.py"], "python3 -V", True)


def test_cli_run_on_a_generic_project(tmp_path, monkeypatch):
    repo, exp = setup(tmp_path)
    script = tmp_path / "replies.json"
    script.write_text(json.dumps([calc_reply(4, "four")]))
    monkeypatch.chdir(repo)
    out = CliRunner().invoke(main, ["run", "calc", "--model", f"replay:{script}", "--loop", "1"])
    assert out.exit_code == 0, out.output
    assert read_rows(exp.path("results.tsv"))[0]["status"] == "keep"
    assert subprocess.run(["git", "diff", "--quiet"], cwd=repo).returncode == 0


def test_check_command_failing_on_the_starting_point_halts(tmp_path):
    repo, exp = setup(tmp_path, check_command="echo tests-are-red-xyz; exit 1")
    with pytest.raises(RatchetError, match="tests-are-red-xyz"):
        session_parts(exp, QuietReporter())


def test_init_command_check_and_metric_fd_flags(tmp_path):
    repo = make_repo(tmp_path)
    out = init_command({"tag": "t", "editable": ["calc.py"], "run_command": "python3 score.py",
                        "check": "python3 -m pytest -q", "metric_fd": True,
                        "higher_is_better": False}, cwd=repo)
    g = json.loads((repo / ".ratchet/t/experiment.json").read_text())["generic"]
    assert g["check_command"] == "python3 -m pytest -q" and g["metric"]["channel"] == "fd"
    assert g["implausible"] == "flag"
    assert "RATCHET_RESULT_FD" in out and "ONLY" in out  # the snippet, and where it reads


def test_old_worktrees_are_deleted_as_files_and_pruned(tmp_path):
    """The previous layout checked the branch out in a worktree a candidate ran in: it is
    removed without asking git to look inside, and the branch is no longer checked out."""
    repo, exp = setup(tmp_path)
    old = repo / ".git/ratchet/calc/branch"
    git(repo, "branch", "ratchet/calc")
    git(repo, "worktree", "add", "-q", str(old), "ratchet/calc")
    (exp.root / "branch.json").write_text(json.dumps({"branch": "ratchet/calc",
                                                      "base": git(repo, "rev-parse", "HEAD")
                                                      .strip()}))
    (old / ".git").write_text("gitdir: /nonexistent/evil\n")  # what a candidate planted
    _, workspace = session_parts(exp, QuietReporter())
    assert workspace is not None and workspace.trees.branch == "ratchet/calc"
    assert not old.exists() and str(old) not in git(repo, "worktree", "list")
    git(repo, "checkout", "-q", "ratchet/calc")  # possible again: not checked out elsewhere
