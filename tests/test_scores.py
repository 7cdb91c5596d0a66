"""scores.py: SCORES.md is a pure function of SCORES.json; unknown cost is never $0."""

from __future__ import annotations

from pathlib import Path

from ratchetloop import scores as scores_mod
from ratchetloop.proposers.base import Usage
from ratchetloop.scores import Row, Scores


def board() -> Scores:
    sc = Scores(experiment="x", unit="us", direction="lower_is_better")
    sc.seed = Row(timestamp="t0", model="seed", kind="seed", score=100.0, commit="seed",
                  note="naive seed", case_scores={"a": 50.0})
    sc.rows.append(Row(timestamp="t1", model="m", kind="best", score=50.0, commit="abc1234",
                       note="a | b", iteration=3, ratio=0.5, ci=(0.45, 0.55),
                       case_scores={"a": 25.0}))
    sc.best_commit = "abc1234"
    return sc


def test_render_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    sc = board()
    scores_mod.save(tmp_path, sc)
    md = (tmp_path / "SCORES.md").read_text()
    again = scores_mod.load(tmp_path, "x", "us", "lower_is_better")
    assert scores_mod.render(again) == md
    assert "x2.000" in md and "best winner: a / b" in md  # pipes cannot break the table


def test_unknown_price_is_not_zero() -> None:
    sc = board()
    sc.usage.add(Usage(prompt_tokens=10, completion_tokens=5, cost_usd=None))
    assert sc.usage.cost_text() == "unknown"
    assert "estimated cost unknown" in sc.render()
