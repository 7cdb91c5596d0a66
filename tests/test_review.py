"""Checker (`--review MODEL`): a reviewer model reads each candidate's diff before it is
evaluated, and vetoes gaming, benchmark-specialised and no-op candidates.

The reviewer is an OpenAI-compatible model on a local fake server (the official SDK over
HTTP) with scripted verdicts; the candidates are the fib red team's forgers
(tests/test_pyharness.py) and honest ones. Rejected candidates are never evaluated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ITERATIVE, git, make_exp_repo, reply, run_ratchet, slow_fib, write_replay
from fakeservers import FakeModelServer, Reply
from generic_helpers import calc_reply, calc_value, make_repo
from test_pyharness import BURN, MEMO

from ratchetloop import Loop, review
from ratchetloop import experiment as experiment_mod
from ratchetloop.budget import Budget
from ratchetloop.errors import RatchetError
from ratchetloop.loop import Options, run_loop
from ratchetloop.memory import Memory
from ratchetloop.proposers.base import CACHE_BREAK
from ratchetloop.proposers.registry import resolve
from ratchetloop.proposers.replay import ReplayProposer
from ratchetloop.views import attempt_sections, plain

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("text", "verdict", "category"), [
    ('{"verdict": "ok", "reason": "honest"}', "ok", None),
    ('{"verdict": "reject", "category": "evaluator_gaming", "reason": "x"}', "reject",
     "evaluator_gaming"),
    ('Looks like a hack.\n```json\n{"verdict": "REJECT", "category": "Evaluator gaming",'
     ' "reason": "reads the caller frame"}\n```\n', "reject", "evaluator_gaming"),
    ('{"verdict": "reject", "category": "specialised to the benchmark shapes"}', "reject",
     "benchmark_specialised"),
    ('{"verdict": "reject", "category": "no-op"}', "reject", "no_op"),
    ('{"verdict": "reject", "category": "breaks a stated rule"}', "reject", "breaks_rule"),
    ('{"verdict": "reject", "category": "vibes"}', "reject", "other"),
    ('{"verdict": "reject"}', "reject", "other"),
    # the last verdict object wins (a reviewer that quotes an example first)
    ('e.g. {"verdict": "ok"} but here: {"verdict": "reject", "category": "no_op"}',
     "reject", "no_op"),
    ('{"verdict": "approve"}', "ok", None),
])
def test_verdicts_are_read_from_bare_fenced_or_wrapped_json(text, verdict, category) -> None:
    got = review.parse_verdict(text)
    assert (got.verdict, got.category, got.warning) == (verdict, category, "")


@pytest.mark.parametrize("text", ["I think it is fine.", "{not json", '{"verdict": "maybe"}',
                                  '["verdict", "reject"]', ""])
def test_an_unusable_reply_lets_the_candidate_through_with_a_warning(text) -> None:
    got = review.parse_verdict(text)
    assert got.ok and got.warning


def test_the_prompt_holds_the_diff_the_rules_and_recent_failures() -> None:
    memory = Memory()
    memory.record_failure(3, "integrity", "wrong_result on a timed call", "", "cheap when timed")
    memory.record_failure(5, "build_error", "SyntaxError", "", "typo")
    diff = review.unified_diff(MEMO, ITERATIVE, "candidate.py")
    assert diff.startswith("--- incumbent/candidate.py\n+++ candidate/candidate.py\n")
    assert "-        _cache[n] = fib(n - 1) + fib(n - 2)\n" in diff
    assert review.unified_diff(MEMO, MEMO, "c.py") == "(no difference from the incumbent)\n"
    prompt = review.build_prompt(function="fib", language="python", rules="RULES: no I/O",
                                 diff=diff, failures=review.recent_failures(memory))
    assert "RULES: no I/O" in prompt and diff in prompt and "before it is benchmarked" in prompt
    stable, _, changing = prompt.partition(CACHE_BREAK)  # the part every review shares
    assert "RULES: no I/O" in stable and diff in changing and "build_error" in changing
    assert prompt.index("build_error (1x, last at iteration 5)") < prompt.index("integrity")
    assert all(category in prompt for category in review.CATEGORIES)
    winner = review.build_prompt(function="fib", language="python", rules="", diff=diff,
                                 failures=[], stage="winner", gain="x3.000 on the suite")
    assert "measured it better than the incumbent (x3.000 on the suite)" in winner


# --------------------------------------------------------------------------- in the loop

# The fib red team's candidates that get past security.py: each is worth a veto.
FIRST_CALLS_ONLY = ("_calls = [0]\n\ndef fib(n):\n    _calls[0] += 1\n    if _calls[0] > 200:\n"
                    "        return 0\n    a, b = 0, 1\n    for _ in range(n):\n"
                    "        a, b = b, a + b\n    return a\n")  # test_pyharness: sampled check
# test_pyharness: patches the clocks a naive harness would read, and burns time per call
CLOCKS = ("import time\nfor name in ('perf_counter', 'process_time', 'monotonic', "
          "'thread_time', 'time'):\n    setattr(time, name, lambda: 0.0)\n"
          "    setattr(time, name + '_ns', lambda: 0)\n" + slow_fib(BURN))
# Correct everywhere and fast on the benchmark's own inputs only: the evaluator would
# accept it (it is proven faster on fib18); only a reader sees it does not generalise.
SHAPES = ("_ANSWERS = {18: 2584, 22: 17711}\n\n\ndef fib(n):\n    if n in _ANSWERS:\n"
          "        return _ANSWERS[n]\n    if n < 2:\n        return n\n"
          "    return fib(n - 1) + fib(n - 2)\n")
NO_OP = "def fib(n):\n    if n <= 1:\n        return n\n    return fib(n - 2) + fib(n - 1)\n"

LRU = ("import functools\n\n\n@functools.lru_cache(maxsize=None)\ndef fib(n):\n"
       "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n")
BROKEN = ITERATIVE + "\n\n_ = 1 // 0\n"  # honest, but fails as it loads: a quick evaluation
REVIEW_USAGE = {"prompt_tokens": 1000, "completion_tokens": 50}


def seeded_fib(root: Path) -> Path:
    """A fib experiment (case fib18) in a new repo with its seed measured: a template that
    tests copy, so each does not measure the seed again."""
    folder = make_exp_repo(root, "fib", cases=["fib18"])
    with pytest.MonkeyPatch.context() as env:  # module scope: before the private lock
        env.setenv("RATCHET_BENCH_LOCK", str(root / "bench.lock"))
        run_loop(experiment_mod.load(folder), ReplayProposer([]), Options(until=0))
    return folder


def copy_of(template: Path, dest: Path, prices: dict | None = None) -> Path:
    """A copy of the template's repository; `prices` are set in its experiment.json."""
    shutil.copytree(template.parents[1], dest / "repo", symlinks=True)
    folder = dest / "repo" / "experiments" / template.name
    if prices:
        contract = json.loads((folder / "experiment.json").read_text())
        (folder / "experiment.json").write_text(json.dumps({**contract, "prices": prices}))
        git(folder, "commit", "-qam", "prices")
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded_fib(tmp_path_factory.mktemp("seeded"))


def verdict(kind: str = "ok", category: str = "", reason: str = "") -> Reply:
    body = {"verdict": kind, "category": category, "reason": reason} if category else {
        "verdict": kind, "reason": reason or "an honest change"}
    return Reply(text=f"```json\n{json.dumps(body)}\n```", usage=REVIEW_USAGE)


def attempts(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/attempt.json"))]


def never_evaluated(folder: Path, n: int) -> bool:
    run = folder / "runs" / f"{n:04d}"
    return (run / "review.json").is_file() and not (run / "result.json").exists() and not (
        list(run.glob("*.log")))


def run_reviewed(folder: Path, replies: list[str], verdicts: list[Reply],
                 **options: object) -> tuple[object, list, list]:
    exp = experiment_mod.load(folder)
    with FakeModelServer(replies, default_text=None) as maker, \
            FakeModelServer(verdicts, default_text=None) as checker:
        proposer = resolve(f"openai-compatible:maker@{maker.openai_base_url}", exp)
        options.setdefault("review", f"openai-compatible:checker@{checker.openai_base_url}")
        options.setdefault("pipeline", False)  # one attempt at a time: verdicts in order
        summary = run_loop(exp, proposer, Options(iterations=len(replies), drift_every=0,
                                                  **options))  # type: ignore[arg-type]
        return summary, maker.posts(), checker.posts()


def test_the_reviewer_vetoes_red_team_candidates_and_passes_honest_ones(template,
                                                                        tmp_path) -> None:
    folder = copy_of(template, tmp_path)
    replies = [reply(FIRST_CALLS_ONLY, "iterate"), reply(CLOCKS, "skip the slow path"),
               reply(SHAPES, "answer the common inputs at once"), reply(NO_OP, "tidy"),
               reply(MEMO, "memoise"), reply(BROKEN, "plain loop"), reply(SHAPES, "again")]
    verdicts = [verdict("reject", "evaluator_gaming", "returns 0 after 200 calls"),
                verdict("reject", "Evaluator gaming", "patches the clocks"),
                verdict("reject", "specialised to the benchmark shapes", "table of 18, 22"),
                verdict("reject", "no-op", "the seed, reordered"),
                verdict("ok"), verdict("ok"),  # memoisation, then again as a proven winner
                Reply(text="Looks fine to me.", usage=REVIEW_USAGE)]
    summary, made, checked = run_reviewed(folder, replies, verdicts, review_wins=True)
    tries = attempts(folder)
    got = [(a["status"], a["failure_kind"]) for a in tries]
    assert got[:4] == [("failed", "review")] * 4, got
    for n, category in enumerate(("evaluator_gaming", "evaluator_gaming",
                                  "benchmark_specialised", "no_op"), start=1):
        assert never_evaluated(folder, n), n
        record = json.loads((folder / "runs" / f"{n:04d}" / "review.json").read_text())
        assert record["verdict"]["verdict"] == "reject"
        assert record["verdict"]["category"] == category
        assert record["usage"]["prompt_tokens"] == 1000 and record["reply"]
        assert tries[n - 1]["message"].startswith(f"reviewer rejected it ({category}): ")
    # the honest ones were evaluated: memoisation won; the plain loop was let through (its
    # reviewer reply held no verdict: a warning, not a veto) and ran
    assert got[4] == ("accepted_best", None)
    assert (folder / "runs" / "0005" / "result.json").is_file()
    assert (folder / "runs" / "0006" / "result.json").is_file()
    assert got[5] == ("failed", "build_error")
    assert got[6] == ("duplicate", "duplicate")  # a vetoed candidate sent again: no review
    # `ratchet show` has the verdicts with the rest of the attempt
    shown = plain(attempt_sections(experiment_mod.load(folder), 3))
    assert ("== reviewer verdict ==\nreject (benchmark_specialised) by openai-compatible:checker:"
            " table of 18, 22\n") in shown
    assert "== reviewer verdict on the proven winner ==\nok by" in plain(
        attempt_sections(experiment_mod.load(folder), 5))
    unread = json.loads((folder / "runs" / "0006" / "review.json").read_text())["verdict"]
    assert unread["verdict"] == "ok" and "no JSON verdict" in unread["warning"]
    # what the reviewer read: the diff against the incumbent, the rules, the failures
    first = checked[0].body["messages"][-1]["content"]
    assert "+    if _calls[0] > 200:\n" in first and "-    if n < 2:\n" in first
    assert "results may be cached across calls" in first  # EXPERIMENT.md
    assert "review (1x, last at iteration 1): reviewer rejected it" in (
        checked[1].body["messages"][-1]["content"])
    assert json.loads((folder / "runs" / "0005" / "review_win.json").read_text())[
        "verdict"]["verdict"] == "ok"  # --review-wins: reviewed twice, then committed
    last = checked[6].body["messages"][-1]["content"]  # against the new incumbent: MEMO
    assert "-        _cache[n] = fib(n - 1) + fib(n - 2)\n" in last
    # memory learnt from each veto; the scoreboard counts them as failed
    memory = json.loads((folder / "MEMORY.json").read_text())
    assert sum(g["count"] for g in memory["failing"].values() if g["kind"] == "review") == 4
    assert "reviewer rejected it (benchmark_specialised)" in (folder / "MEMORY.md").read_text()
    scores = json.loads((folder / "SCORES.json").read_text())
    assert scores["counts"]["failed"] == 5 and scores["counts"]["accepted"] == 1
    # the reviewer's tokens are counted with the proposer's (100 + 20 per fake reply)
    assert (len(made), len(checked)) == (7, 7)
    usage = scores["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        7 * 100 + 7 * 1000, 7 * 20 + 7 * 50)
    # and the reviewer's share, with what it decided, on the scoreboard
    assert scores["review"]["usage"]["prompt_tokens"] == 7 * 1000
    assert scores["review"]["vetoes"] == {"evaluator_gaming": 2, "benchmark_specialised": 1,
                                          "no_op": 1}
    assert ("- reviewer (--review): 7 reviews, 4 vetoes (benchmark_specialised 1,"
            " evaluator_gaming 2, no_op 1), 1 replies without a verdict (let through);"
            " 7350 tokens") in (folder / "SCORES.md").read_text()


def test_review_wins_asks_again_before_the_commit(template, tmp_path) -> None:
    """A proven winner vetoed at its second review: recorded as a review failure, no row,
    no commit, no archive. (A winner passing it: the test above, run with --review-wins.)"""
    folder = copy_of(template, tmp_path)
    verdicts = [verdict("ok"), verdict("reject", "evaluator_gaming", "too good to be true")]
    _, _, checked = run_reviewed(folder, [reply(MEMO, "memo")], verdicts, review_wins=True)
    (one,) = attempts(folder)
    assert (one["status"], one["failure_kind"]) == ("failed", "review")
    assert one["message"] == "reviewer rejected it (evaluator_gaming): too good to be true"
    run = folder / "runs" / "0001"
    assert (run / "result.json").is_file()  # evaluated and proven better, then vetoed
    assert json.loads((run / "decision.json").read_text())["is_best"] is True
    win = json.loads((run / "review_win.json").read_text())
    assert win["stage"] == "winner" and win["verdict"]["category"] == "evaluator_gaming"
    assert "measured it better than the incumbent (x" in checked[1].body["messages"][-1][
        "content"]
    assert json.loads((folder / "SCORES.json").read_text())["rows"] == []
    assert "Accept fib" not in git(folder.parents[1], "log", "--format=%s")
    assert not (folder / "winners").exists()
    memory = json.loads((folder / "MEMORY.json").read_text())
    assert [g["kind"] for g in memory["failing"].values()] == ["review"]


def test_the_reviewer_is_held_to_max_cost(template, tmp_path) -> None:
    # a priced reviewer: its request (prompt + 16000 completion tokens at $10/M) could
    # cost ~$0.17; the run may spend $0.05 in all, so it is never sent
    folder = copy_of(template, tmp_path, prices={"checker": {"input": 10.0, "output": 10.0}})
    summary, made, checked = run_reviewed(folder, [reply(MEMO, "memo"), reply(LRU, "lru")],
                                          [verdict("ok")], max_cost=0.05)
    assert checked == []
    assert summary.stop_reason.startswith("cost budget $0.0500 would be exceeded")
    assert "openai-compatible:checker" in summary.stop_reason
    # the candidate was paid for: recorded, not evaluated, and not held against it
    first = attempts(folder)[0]
    assert (first["status"], first["failure_kind"]) == ("failed", "budget")
    assert first["message"].startswith("not reviewed: cost budget")
    assert not (folder / "runs" / "0001" / "result.json").exists()
    assert (folder / "runs" / "0001" / "budget.json").is_file()
    assert json.loads((folder / "MEMORY.json").read_text())["failing"] == {}
    assert len(attempts(folder)) == len(made) == 1  # nothing proposed after the refusal


def test_pipelined_the_reviewer_still_sees_every_candidate_before_its_evaluation(
        template, tmp_path) -> None:
    """A remote proposer is pipelined by default (scheduler.py): the next proposal is asked
    for while one is evaluated, and screened, reviewed included, as it comes back."""
    folder = copy_of(template, tmp_path)
    _, made, checked = run_reviewed(
        folder, [reply(SHAPES, "table"), reply(MEMO, "memo"), reply(NO_OP, "tidy")],
        [verdict("reject", "benchmark_specialised", "table"), verdict("ok"),
         verdict("reject", "no_op", "reordered")], pipeline=True)
    got = {a["note"]: (a["status"], a["failure_kind"]) for a in attempts(folder)}
    assert got == {"table": ("failed", "review"), "memo": ("accepted_best", None),
                   "tidy": ("failed", "review")}
    assert len(made) == len(checked) == 3
    assert never_evaluated(folder, 1) and never_evaluated(folder, 3)


def test_the_reviewer_must_be_a_language_model(template) -> None:
    exp = experiment_mod.load(template)
    with pytest.raises(RatchetError, match="needs a language model"):
        review.make_reviewer(exp, Options(review="tuner"), Budget())
    assert review.make_reviewer(exp, Options(), Budget()) is None  # off by default


# --------------------------------------------------------------------------- CLI and API


def test_ratchet_run_with_review_and_novelty(template, tmp_path) -> None:
    folder = copy_of(template, tmp_path)
    model = write_replay(tmp_path / "replay.json", [
        reply(BROKEN, "plain loop"),
        reply(BROKEN.replace("fib(n):\n", 'fib(n):\n    """F(n)."""\n', 1), "plain loop, again"),
        reply(SHAPES, "table")])
    with FakeModelServer([verdict("ok"), verdict("reject", "benchmark_specialised", "table")],
                         default_text=None) as checker:
        proc = run_ratchet("run", str(folder), "--model", model, "--loop", "3", "--review",
                           f"openai-compatible:checker@{checker.openai_base_url}",
                           "--review-wins", "--novelty", cwd=folder)
        checked = checker.posts()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [(a["status"], a["failure_kind"]) for a in attempts(folder)] == [
        ("failed", "build_error"), ("duplicate", "novelty"), ("failed", "review")]
    assert "(novelty threshold 97.0%)" in attempts(folder)[1]["message"]
    assert len(checked) == 2  # the near-duplicate was never reviewed
    alone = run_ratchet("run", str(folder), "--model", model, "--review-wins", cwd=folder)
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [
        "error: --review-wins reviews winners again: it needs --review MODEL"]


def test_python_api_takes_review_and_novelty(tmp_path) -> None:
    repo = make_repo(tmp_path)
    replies = [calc_reply(6, "six"), calc_reply(6, "six, documented", '    """Six."""\n'),
               calc_reply(2, "two")]
    with FakeModelServer([verdict("ok"), verdict("reject", "no_op", "hard-codes a number")],
                         default_text=None) as checker:
        loop = Loop(target=str(repo / "calc.py"), metric=calc_value,
                    directives="Lower cost() without hard-coding it.",
                    proposer=ReplayProposer(replies), higher_is_better=False)
        result = loop.run(iterations=3, novelty=0.97,
                          review=f"openai-compatible:checker@{checker.openai_base_url}")
        checked = checker.posts()
    tries = attempts(result.folder)
    assert [(a["status"], a["failure_kind"]) for a in tries] == [
        ("accepted_best", None), ("duplicate", "novelty"), ("failed", "review")]
    assert result.best_metric == 6 and len(checked) == 2
    prompt = checked[0].body["messages"][-1]["content"]
    assert "+    return 6" in prompt and "-    base = 10" in prompt
    assert "Lower cost() without hard-coding it." in prompt  # program.md: the rules
