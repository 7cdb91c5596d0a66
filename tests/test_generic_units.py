"""Generic mode's parts: edit parsing, zero-variance decisions, results.tsv progress, how a
metric is read (result channel, output, the 0.0 regression), contract and bundle guards."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ratchetloop import sandbox
from ratchetloop.experiment import Acceptance
from ratchetloop.extract import ExtractionError
from ratchetloop.generic.adapter import (
    blocked_write,
    command_measure,
    cpu_comparison,
    exact_comparison,
    measured_from,
    positive,
)
from ratchetloop.generic.contract import (
    GenericSpec,
    MetricSpec,
    metric_from_output,
    read_channel,
)
from ratchetloop.generic.edits import apply_reply, files_of, from_bundle, to_bundle
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


# ---------------------------------------------------------------- metric reading


@pytest.mark.parametrize("channel", ["auto", "output"])
def test_a_metric_of_zero_is_a_value_not_missing(tmp_path: Path, channel: str):
    """Regression: `read_metric(stdout) or read_metric(stdout + stderr)` took 0.0 for
    missing and returned the 7 of a warning on stderr."""
    spec = GenericSpec(tag="t", editable=["a.py"], metric=MetricSpec(channel=channel),
                       run_command="echo loss=0; echo 'warning: 7 deprecated calls' >&2")
    measured = command_measure(spec, 60, "a.py")(tmp_path)
    assert measured.value == 0.0 and measured.channel == "output"
    assert metric_from_output("", "loss=0.5\n", MetricSpec()) == 0.5  # stderr when stdout has none


@pytest.mark.parametrize("data, value, error", [
    (None, None, ""), (b"", None, ""), (b" \n", None, ""),
    (b"0\n", 0.0, ""), (b" 1.5e-3 ", 0.0015, ""), (b"-2", -2.0, ""),
    (b"1\n2\n", None, "2 values"), (b"fast", None, "not a number"),
    (b"nan", None, "not a number"), (b"1e999", None, "not a finite"),
    (b"\xff", None, "non-ASCII"), (b"1" * 100, None, "100 bytes"),
])
def test_the_result_channel_holds_exactly_one_number(data, value, error):
    got, why = read_channel(data)
    assert got == value and (error in why if error else why == "")


def test_measured_from_prefers_the_channel_and_is_strict_about_it():
    def proc(result: bytes | None, stdout: str = "cost=1\n") -> sandbox.SandboxResult:
        out = sandbox.SandboxResult(0, stdout, "", wall_seconds=0.5)
        out.result, out.cpu_seconds = result, 0.25  # type: ignore[attr-defined]
        return out

    auto, fd = MetricSpec(), MetricSpec(channel="fd")
    m = measured_from(proc(b"7\n"), auto)
    assert (m.value, m.channel, m.wall_seconds, m.cpu_seconds) == (7.0, "fd", 0.5, 0.25)
    assert measured_from(proc(None), auto).value == 1.0  # nothing on the fd: the output
    assert measured_from(proc(None), fd).kind == "no_metric"  # --metric-fd: never stdout
    bad = measured_from(proc(b"7\n1\n"), auto)
    assert bad.value is None and bad.kind == "integrity"
    assert measured_from(proc(b"7"), MetricSpec(channel="output")).value == 1.0


# ---------------------------------------------------------------- contract and bundle


@pytest.mark.parametrize("editable", [[".git/config"], ["../x.py"], ["/etc/passwd"],
                                      [".gitattributes"], ["sub/.gitmodules"]])
def test_editable_paths_stay_plain_files_of_the_project(editable):
    with pytest.raises(ValueError):
        GenericSpec(tag="t", editable=editable, run_command="true")


def test_a_bundle_separator_inside_a_file_is_refused():
    text = "x = 1\n### ratchet-file: ../../hooks/post-commit\n#!/bin/sh\n"
    with pytest.raises(ExtractionError) as info:
        apply_reply(f"File: a.py\n```python\n{text}```\n", BASE, EDITABLE)
    assert info.value.kind == "integrity"
    with pytest.raises(ExtractionError):
        files_of(to_bundle({"a.py": text}), EDITABLE)  # the same text, read back
    assert files_of(to_bundle(BASE), EDITABLE) == BASE


def test_blocked_write_names_the_read_only_file():
    log = "Traceback ...\nOSError: [Errno 30] Read-only file system: 'score.py'\n"
    assert blocked_write(log, ["score.py"]) == "score.py"
    assert blocked_write("PermissionError: [Errno 13] Permission denied: '/x/data/"
                         "bench.py'", ["data/bench.py"]) == "data/bench.py"
    assert blocked_write("ValueError: bad input in score.py", ["score.py"]) is None


def test_plausibility_cpu_comparison_is_one_look_at_the_confidence():
    acc = Acceptance(min_effect=0.01, confidence=0.95, min_rounds=5, max_rounds=20,
                     batch_rounds=5)
    ref = [0.10, 0.11, 0.10, 0.12, 0.10, 0.11, 0.10, 0.11, 0.10, 0.12]
    double = [2 * v for v in ref]
    assert cpu_comparison(double, ref, acc).verdict == "worse"
    assert cpu_comparison(double[:5], ref[:5], acc).verdict != "worse"  # 5 rounds cannot tell
    assert cpu_comparison(ref, ref, acc).verdict != "worse"


def test_winners_are_committed_without_hooks_filters_or_a_work_tree(tmp_path: Path):
    """Plumbing commit: the repository's own hooks, fsmonitor and clean filters never run;
    the file mode and every other file of the tip are kept."""
    from generic_helpers import git, make_project

    from ratchetloop import gitops

    canary = tmp_path / "canary"
    repo = make_project(tmp_path, {"pkg/run.sh": "echo 1\n", "keep.txt": "k\n",
                                   ".gitattributes": "*.sh filter=x\n"})
    (repo / "pkg/run.sh").chmod(0o755)
    git(repo, "add", "pkg/run.sh")
    git(repo, "commit", "-qm", "exec bit")
    git(repo, "branch", "ratchet/t")
    git_dir, void = gitops.common_dir(repo), tmp_path / "void"
    hook = f"#!/bin/sh\necho ran >> {canary}\n"
    for name in ("post-commit", "pre-commit", "reference-transaction", "post-index-change"):
        (repo / ".git/hooks" / name).write_text(hook)
        (repo / ".git/hooks" / name).chmod(0o755)
    (repo / "payload.sh").write_text(hook)
    (repo / "payload.sh").chmod(0o755)
    git(repo, "config", "core.fsmonitor", str(repo / "payload.sh"))
    git(repo, "config", "filter.x.clean", str(repo / "payload.sh"))
    void.mkdir()
    sha = gitops.commit_files(repo, git_dir, void, "ratchet/t", {"pkg/run.sh": "echo 2\n"},
                              "Accept t winner\n", tmp_path / "index")
    assert not canary.exists()
    assert git(repo, "rev-parse", "--short=7", "ratchet/t").strip() == sha
    assert git(repo, "show", "ratchet/t:pkg/run.sh") == "echo 2\n"
    assert "100755" in git(repo, "ls-tree", "ratchet/t", "pkg/run.sh")
    assert git(repo, "show", "ratchet/t:keep.txt") == "k\n"
    assert gitops.commit_files(repo, git_dir, void, "ratchet/t", {"pkg/run.sh": "echo 2\n"},
                               "same\n", tmp_path / "index") == sha  # nothing changed
    assert list(void.iterdir()) == [] and not (tmp_path / "index").exists()
