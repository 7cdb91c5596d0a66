"""Generic mode's pure parts: edit parsing, zero-variance decisions, results.tsv progress."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ratchetloop.experiment import Acceptance
from ratchetloop.extract import ExtractionError
from ratchetloop.generic.adapter import exact_comparison, positive
from ratchetloop.generic.edits import apply_reply, from_bundle, to_bundle
from ratchetloop.generic.results import ResultsReporter, read_rows
from ratchetloop.loop import Outcome, QuietReporter
from ratchetloop.scores import Scores

BASE = {"a.py": "x = 1\ny = 2\n", "pkg/b.py": "def f():\n    return 0\n"}
EDITABLE = ["a.py", "pkg/b.py"]


def test_bundle_round_trip():
    assert from_bundle(to_bundle(BASE)) == BASE


def test_search_replace_in_two_files_and_a_note():
    reply = ("a.py\n```python\n<<<<<<< SEARCH\ny = 2\n=======\ny = 3\n>>>>>>> REPLACE\n```\n"
             "`pkg/b.py`\n<<<<<<< SEARCH\n    return 0\n=======\n    return 1\n>>>>>>> REPLACE\n"
             "Note: bump both\nIdea: try 4\n")
    out = apply_reply(reply, BASE, EDITABLE)
    files = from_bundle(out.source)
    assert files == {"a.py": "x = 1\ny = 3\n", "pkg/b.py": "def f():\n    return 1\n"}
    assert out.note == "bump both" and out.ideas == ["try 4"]


@pytest.mark.parametrize("reply, kind", [
    ("File: c.py\n```python\nz = 1\n```\n", "outside_editable"),
    ("a.py\n<<<<<<< SEARCH\nnot there\n=======\nq\n>>>>>>> REPLACE\n", "search_not_found"),
    ("```python\nz = 1\n```\n", "no_path"),  # two editable files: the path is required
    ("File: a.py\n```python\nx = 1\ny = 2\n```\n", "no_change"),
    ("I would memoise it.", "no_code"),
])
def test_unusable_replies_are_recorded_failures(reply, kind):
    with pytest.raises(ExtractionError) as info:
        apply_reply(reply, BASE, EDITABLE)
    assert info.value.kind == kind


def test_single_editable_file_accepts_an_unnamed_block():
    out = apply_reply("Sure:\n```python\nx = 5\n```\nNote: five\n", {"a.py": "x = 1\n"},
                      ["a.py"])
    assert from_bundle(out.source) == {"a.py": "x = 5\n"}


def test_zero_variance_decided_on_effect_size():
    acc = Acceptance(min_effect=0.01)
    assert exact_comparison(0.91, 0.90, 3, acc, lower=False).verdict == "better"
    assert exact_comparison(0.905, 0.90, 3, acc, lower=False).verdict == "same"  # < 1%
    assert exact_comparison(0.89, 0.90, 3, acc, lower=False).verdict == "worse"
    zero = exact_comparison(0.0, 2.0, 3, acc, lower=True)  # an error count reaching 0
    assert zero.verdict == "better" and math.isnan(zero.ratio)


def test_non_positive_metrics_are_shifted_for_the_ratio_test():
    c, r = positive([-1.0, 0.0], [-2.0, -3.0])
    assert min(c + r) > 0 and [b - a for a, b in zip(c, r, strict=True)] == [-1.0, -3.0]
    assert positive([1.0], [2.0]) == ([1.0], [2.0])


class Messages(QuietReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_results_rows_and_a_progress_line_every_ten(tmp_path: Path):
    inner = Messages()
    reporter = ResultsReporter(inner, tmp_path)
    scores = Scores(experiment="x", unit="", direction="lower_is_better")
    for i in range(1, 21):
        status = ["accepted_best", "rejected", "failed"][i % 3]
        reporter.outcome(Outcome(iteration=i, status=status, note=f"idea\t{i}",
                                 score=float(i), commit="abc1234" if i % 3 == 0 else None,
                                 failure_kind="crash" if status == "failed" else None,
                                 message="exited 1" if status == "failed" else ""), scores)
    rows = read_rows(tmp_path / "results.tsv")
    assert len(rows) == 20 and rows[2] == {"commit": "abc1234", "metric": "3",
                                           "status": "keep", "description": "idea 3"}
    assert rows[0]["status"] == "discard"
    assert rows[1]["status"] == "crash" and "[crash: exited 1]" in rows[1]["description"]
    assert len(inner.lines) == 2 and "iteration 20" in inner.lines[1]
    assert "keep 6 / discard 7 / crash 7" in inner.lines[1]
