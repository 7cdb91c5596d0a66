"""The loop on the fib experiment: accept, reject, duplicates, security, wrong results,
extraction failures, runs/<n>/ records, and winners committed without touching user work."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ITERATIVE, NAIVE, git, reply, slow_fib

from ratchetloop import experiment as experiment_mod
from ratchetloop import memory as memory_mod
from ratchetloop.loop import Options, run_loop
from ratchetloop.proposers.replay import ReplayProposer


def run(folder: Path, replies: list[str], **options: object):
    exp = experiment_mod.load(folder)
    proposer = ReplayProposer(replies)
    summary = run_loop(exp, proposer, Options(iterations=len(replies), drift_every=0,
                                              **options))  # type: ignore[arg-type]
    return summary, proposer


def scores(folder: Path) -> dict:
    return json.loads((folder / "SCORES.json").read_text(encoding="utf-8"))


def accept_commits(repo: Path) -> list[tuple[str, str]]:
    out = git(repo, "log", "--format=%h %s")
    return [tuple(line.split(" ", 1)) for line in out.splitlines() if " Accept " in f" {line}"]


def test_accept_then_reject_then_duplicate(fib: Path) -> None:
    repo = fib.parents[1]
    summary, proposer = run(fib, [
        reply(ITERATIVE, "iterate bottom-up with two variables"),
        reply(slow_fib(0), "same loop, spelled differently"),  # same speed: not better
        reply("# reformatted\ndef fib(n):\n    a,b=0,1\n    for _ in range(n):\n"
              "        a,b=b,a+b\n    return a\n", "again"),  # same AST as the winner
    ])
    statuses = [o.status for o in summary.outcomes]
    assert statuses == ["accepted_best", "rejected", "duplicate"], summary.outcomes
    win = summary.outcomes[0]
    sc = scores(fib)
    assert sc["best_commit"] == win.commit
    assert [r["commit"] for r in sc["rows"]] == [win.commit]
    assert sc["counts"] == {"attempts": 3, "accepted": 1, "rejected": 1, "failed": 0,
                            "duplicates": 1, "near_duplicates": 0}
    # the commit reads like the reference project's and carries only the candidate
    subject = git(repo, "log", "-1", "--format=%s", win.commit).strip()
    assert subject.startswith("Accept fib winner from replay at ")
    assert subject.endswith("us")
    changed = git(repo, "show", "--name-only", "--format=", win.commit).split()
    assert changed == ["experiments/fib/candidate.py"]
    assert (fib / "candidate.py").read_text() == ITERATIVE
    archived = fib / "winners" / win.commit
    assert (archived / "candidate.py").read_text() == ITERATIVE
    assert "iterate bottom-up" in (archived / "note.txt").read_text()
    # then state and winners/ were committed in a second commit
    record = git(repo, "log", "-1", "--format=%h", "--grep", f"winner {win.commit}").strip()
    recorded = set(git(repo, "show", "--name-only", "--format=", record).split())
    assert {"experiments/fib/SCORES.json", "experiments/fib/MEMORY.json",
            f"experiments/fib/winners/{win.commit}/candidate.py"} <= recorded
    assert git(repo, "status", "--porcelain", "--", "experiments/fib/winners").strip() == ""
    # memory: the win, the measured non-win, the repeat; the hypothesis is marked tried
    mem = json.loads((fib / "MEMORY.json").read_text())
    assert [w["commit"] for w in mem["worked"]] == [win.commit]
    assert [t["note"] for t in mem["tried"]] == ["same loop, spelled differently"]
    assert mem["duplicates"] == 1
    assert any(i["tried"] for i in mem["unexplored"] if "bottom-up" in i["text"])
    md = (fib / "MEMORY.md").read_text()
    assert "iterate bottom-up" in md and "repeated code already evaluated" in md
    # the next prompt showed the new incumbent
    assert "a, b = b, a + b" in proposer.prompts[1]


def test_every_attempt_leaves_a_full_record(fib: Path) -> None:
    run(fib, [reply(ITERATIVE, "iterate"), reply(NAIVE, "naive again"),
              "no code at all, sorry"])
    runs = fib / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["0001", "0002", "0003"]
    first = runs / "0001"
    for name in ("prompt.md", "reply.md", "candidate.py", "note.txt", "security.json",
                 "result.json", "decision.json", "attempt.json", "request.json"):
        assert (first / name).is_file(), name
    assert json.loads((first / "security.json").read_text()) == {"ok": True, "reasons": []}
    result = json.loads((first / "result.json").read_text())
    assert result["ok"] is True and set(result["samples"]) == {"fib18", "fib22"}
    attempt = json.loads((first / "attempt.json").read_text())
    assert attempt["iteration"] == 1 and attempt["status"] == "accepted_best"
    assert attempt["commit"] and attempt["model"] == "replay"
    # the naive source is the seed: a duplicate, never evaluated
    second = json.loads((runs / "0002" / "attempt.json").read_text())
    assert second["status"] == "duplicate" and "seed" in second["message"]
    assert not (runs / "0002" / "result.json").exists()
    third = json.loads((runs / "0003" / "attempt.json").read_text())
    assert (third["status"], third["failure_kind"]) == ("failed", "no_code")
    assert (runs / "0003" / "reply.md").read_text() == "no code at all, sorry"


def test_security_rejection_never_runs(fib: Path) -> None:
    hostile = ("import os\n\ndef fib(n):\n    os.system('touch /tmp/pwned-by-fib')\n"
               "    return n\n")
    summary, _ = run(fib, [reply(hostile, "shell out")])
    o = summary.outcomes[0]
    assert (o.status, o.failure_kind) == ("failed", "security")
    assert "imports os" in o.message
    run_dir = fib / "runs" / "0001"
    verdict = json.loads((run_dir / "security.json").read_text())
    assert verdict["ok"] is False and verdict["reasons"]
    assert not (run_dir / "result.json").exists()  # never evaluated
    mem = json.loads((fib / "MEMORY.json").read_text())
    assert [g["kind"] for g in mem["failing"].values()] == ["security"]


def test_wrong_result_is_rejected_and_remembered(fib: Path) -> None:
    off_by_one = "def fib(n):\n    a, b = 1, 1\n    for _ in range(n):\n        a, b = b, a + b\n" \
                 "    return a\n"
    summary, proposer = run(fib, [reply(off_by_one, "start at one"),
                                  reply(ITERATIVE, "fixed start")])
    first, second = summary.outcomes
    assert (first.status, first.failure_kind) == ("failed", "validation_error")
    assert "wrong_result" in first.message
    assert second.status == "accepted_best"
    # the failure was shown to the model in the next prompt
    assert "wrong_result" in proposer.prompts[1]
    assert "fixed start" in scores(fib)["rows"][0]["note"]


def test_extraction_failures_are_recorded_and_grouped(fib: Path) -> None:
    replies = [
        "I would memoise it.",  # no code
        reply("def fib(n):\n    return helper(n)\n\ndef helper(n):\n    return n\n", "two"),
        reply("def fibonacci(n):\n    return n\n", "wrong name"),
        "```python\ndef fib(n):\n    a, b = 0, 1\n",  # truncated
        "Nothing here either.",  # no code again: same group
    ]
    summary, _ = run(fib, replies)
    kinds = [o.failure_kind for o in summary.outcomes]
    assert kinds == ["no_code", "multiple_functions", "wrong_function", "truncated", "no_code"]
    assert all(o.status == "failed" for o in summary.outcomes)
    mem = memory_mod.load(fib)
    groups = {g.kind: g.count for g in mem.failing.values()}
    assert groups == {"no_code": 2, "multiple_functions": 1, "wrong_function": 1,
                      "truncated": 1}
    assert scores(fib)["counts"]["failed"] == 5
    assert "2x no_code" in mem.render()
    for n in range(1, 6):
        assert (fib / "runs" / f"{n:04d}" / "attempt.json").is_file()


def test_winner_commit_leaves_user_changes_alone(fib: Path) -> None:
    repo = fib.parents[1]
    (repo / "README.md").write_text("user project\nunstaged edit\n")
    (repo / "staged.txt").write_text("staged by the user\n")
    git(repo, "add", "staged.txt")
    (repo / "untracked.txt").write_text("scratch\n")
    status_before = git(repo, "status", "--porcelain", "--", "README.md", "staged.txt",
                        "untracked.txt")
    cached_before = git(repo, "diff", "--cached")
    diff_before = git(repo, "diff", "--", "README.md")

    summary, _ = run(fib, [reply(ITERATIVE, "iterate")])
    assert summary.outcomes[0].status == "accepted_best"

    assert git(repo, "status", "--porcelain", "--", "README.md", "staged.txt",
               "untracked.txt") == status_before
    assert git(repo, "diff", "--cached") == cached_before
    assert git(repo, "diff", "--", "README.md") == diff_before
    for sha, _subject in accept_commits(repo):
        files = git(repo, "show", "--name-only", "--format=", sha).split()
        assert all(f.startswith("experiments/fib/") for f in files), files
    touched = git(repo, "log", "--name-only", "--format=", "HEAD~2..HEAD").split()
    assert all(f.startswith("experiments/fib/") for f in touched), touched


def test_nonbest_specialist_and_next_best(fib: Path) -> None:
    # 2x better overall (a clear best), then 4x better: each is a new best winner
    summary, _ = run(fib, [reply(slow_fib(20000), "burn less"),
                           reply(slow_fib(5000), "burn even less")])
    assert [o.status for o in summary.outcomes] == ["accepted_best", "accepted_best"]
    sc = scores(fib)
    assert sc["best_commit"] == summary.outcomes[1].commit
    assert len(sc["rows"]) == 2
    md = (fib / "SCORES.md").read_text()
    assert "best winner" in md and "former best winner" in md
    for row in sc["rows"]:
        assert (fib / "winners" / row["commit"] / "candidate.py").is_file()


def test_failure_line_is_only_about_the_last_attempt(fib: Path) -> None:
    """A failure is shown in the next prompt, and gone after a measured rejection or a
    duplicate (it used to stay until the next accept)."""
    summary, proposer = run(fib, [
        reply(ITERATIVE, "iterate bottom-up"),  # accepted
        "no code at all, sorry",  # failed: extraction
        reply(slow_fib(0), "same loop, spelled differently"),  # measured, not better
        "no code at all, sorry",  # failed again
        reply(ITERATIVE, "iterate again"),  # duplicate of the winner
        reply(ITERATIVE, "and again"),
    ])
    assert [o.status for o in summary.outcomes] == [
        "accepted_best", "failed", "rejected", "failed", "duplicate", "duplicate"]
    failed_line = "Your last attempt failed"
    assert [failed_line in p for p in proposer.prompts] == [
        False, False, True, False, True, False]
