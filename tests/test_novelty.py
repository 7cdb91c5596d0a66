"""Novelty filter (`--novelty`): near-duplicates of evaluated code are not evaluated again.

Unit tests of the token similarity, then real runs of the fib experiment: the proposer is
an OpenAI-compatible model on a local fake server (the official SDK over HTTP), whose
replies include near-duplicates of earlier candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ITERATIVE, reply
from fakeservers import FakeModelServer
from test_review import copy_of, seeded_fib

from ratchetloop import experiment as experiment_mod
from ratchetloop import novelty
from ratchetloop.errors import RatchetError
from ratchetloop.loop import Options, run_loop
from ratchetloop.proposers.registry import resolve

# A longer honest candidate, so that one changed token is a small share of it.
DOUBLING = '''def fib(n):
    """Fast doubling: F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)^2 + F(k+1)^2."""
    a, b = 0, 1
    for bit in bin(n)[2:]:
        c = a * (2 * b - a)
        d = a * a + b * b
        if bit == "1":
            a, b = d, c + d
        else:
            a, b = c, d
    return a
'''
# the same code without its docstring, commented and spaced out: the fingerprint (the
# AST) differs, the tokens do not
DOUBLING_DRESSED = '''def fib(n):
    # fast doubling
    a, b = 0, 1
    for bit in bin(n)[2:]:   # most significant bit first
        c = a * (2*b - a)

        d = a*a + b*b
        if bit == "1":
            a, b = d, c + d
        else:
            a, b = (c), d
    return a
'''
# a near-duplicate: one extra no-op statement
DOUBLING_NEAR = DOUBLING.replace("    return a\n", "    a = a\n    return a\n")


def test_tokens_ignore_comments_docstrings_and_layout() -> None:
    py = novelty.tokens(DOUBLING, "python")
    assert "Fast" not in " ".join(py) and '"1"' in py  # docstring gone, literals kept
    dressed = novelty.tokens(DOUBLING_DRESSED, "python")
    assert 0.97 < novelty.similarity(py, dressed) < 1  # all but the parentheses of `(c)`
    assert novelty.tokens(DOUBLING_DRESSED.replace("(c)", "c"), "python") == py
    c = "int f(int x) { /* a */ return x + 1; // b\n}\n"
    assert novelty.tokens(c, "c") == ["int", "f", "(", "int", "x", ")", "{", "return", "x",
                                      "+", "1", ";", "}"]
    assert novelty.tokens('char *s = "// not a comment";', "c")[-2] == '"// not a comment"'
    # a source Python cannot tokenise still gets tokens (a truncated string)
    assert novelty.tokens('def f(:\n    return "x\n', "python")[:3] == ["def", "f", "("]


def test_similarity_ranks_near_duplicates_above_real_changes() -> None:
    def sim(a: str, b: str) -> float:
        return novelty.similarity(novelty.tokens(a, "python"), novelty.tokens(b, "python"))

    assert sim(DOUBLING, DOUBLING) == 1.0
    assert 0.97 <= sim(DOUBLING, DOUBLING_NEAR) < 1.0
    assert sim(DOUBLING, ITERATIVE) < 0.6
    assert novelty.similarity([], []) == 1.0 and novelty.similarity(["a"], []) == 0.0


def test_index_reads_only_evaluated_attempts_and_winners(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for n, source, evaluated in ((1, DOUBLING, True), (2, ITERATIVE, False)):
        (runs / f"{n:04d}").mkdir(parents=True)
        (runs / f"{n:04d}" / "candidate.py").write_text(source)
        if evaluated:
            (runs / f"{n:04d}" / "result.json").write_text("{}")
    index = novelty.Index(tmp_path, "candidate.py", "candidate.py", "python", 0.97)
    index.refresh()
    match = index.nearest(DOUBLING_NEAR)
    assert match is not None and match.label == "attempt 1" and 0.97 <= match.ratio < 1
    assert index.nearest(ITERATIVE) is None  # attempt 2 never reached the evaluator
    (tmp_path / "winners" / "abc1234").mkdir(parents=True)
    (tmp_path / "winners" / "abc1234" / "candidate.py").write_text(ITERATIVE)
    near = ITERATIVE.replace("return a", "return (a)")
    index.refresh()  # a winner kept from before seed.py: not on the scoreboard, not read
    assert index.nearest(near) is None
    index.refresh(["abc1234"])  # on the scoreboard (a rollback made it the incumbent)
    hit = index.nearest(near)
    assert hit is not None and hit.label == "winner abc1234"
    strict = novelty.Index(tmp_path, "candidate.py", "candidate.py", "python", 0.999)
    strict.refresh()
    assert strict.nearest(DOUBLING_NEAR) is None  # under a stricter threshold: novel


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded_fib(tmp_path_factory.mktemp("seeded"))


def _run(folder: Path, replies: list[str], **options: object) -> list[dict]:
    exp = experiment_mod.load(folder)
    with FakeModelServer(replies, default_text=None) as srv:
        proposer = resolve(f"openai-compatible:maker@{srv.openai_base_url}", exp)
        # one attempt at a time: pipelined, a proposal is screened while the one before is
        # evaluated, against the evaluations finished by then
        run_loop(exp, proposer, Options(iterations=len(replies), drift_every=0,
                                        pipeline=False, **options))  # type: ignore[arg-type]
    return [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/attempt.json"))]


def test_near_duplicates_are_skipped_unevaluated_and_counted(template, tmp_path) -> None:
    folder = copy_of(template, tmp_path)
    replies = [reply(DOUBLING, "fast doubling"),
               reply(DOUBLING_NEAR, "fast doubling, tidier"),
               reply(DOUBLING_DRESSED, "fast doubling, commented")]
    tries = _run(folder, replies, novelty=0.97)
    got = [(a["status"], a["failure_kind"]) for a in tries]
    assert got[0] == ("accepted_best", None)
    assert got[1] == ("duplicate", "novelty") and got[2] == ("duplicate", "novelty")
    assert "too similar to attempt 1" in tries[1]["message"]
    for n in (2, 3):  # never evaluated: no result, no logs
        assert not (folder / "runs" / f"{n:04d}" / "result.json").exists()
        assert not list((folder / "runs" / f"{n:04d}").glob("*.log"))
    scores = json.loads((folder / "SCORES.json").read_text())
    assert scores["counts"]["duplicates"] == 2 and scores["counts"]["attempts"] == 3
    assert scores["counts"]["near_duplicates"] == 2
    assert "duplicates skipped 2, 2 of them near (--novelty))" in (
        folder / "SCORES.md").read_text()
    memory = json.loads((folder / "MEMORY.json").read_text())
    assert memory["duplicates"] == 2  # the prompt says "try something new"


def test_off_by_default_a_near_duplicate_is_evaluated(template, tmp_path) -> None:
    folder = copy_of(template, tmp_path)
    broken = DOUBLING + "\n\n_ = 1 // 0\n"  # fails as it loads: a quick evaluation
    tries = _run(folder, [reply(broken, "fast doubling"), reply(broken + "_ = 2\n", "again")])
    assert [a["failure_kind"] for a in tries] == ["build_error"] * 2
    assert (folder / "runs" / "0002" / "result.json").exists()


def test_a_threshold_out_of_range_is_one_clear_error(template, tmp_path) -> None:
    folder = copy_of(template, tmp_path)
    with pytest.raises(RatchetError, match="novelty threshold"):
        _run(folder, [reply(DOUBLING, "x")], novelty=1.5)
