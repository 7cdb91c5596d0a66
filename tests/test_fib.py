"""The fib demo, scripted like the autoloop article's run: keep real gains, reject the wrong one."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ratchetloop import experiment as experiment_mod
from ratchetloop.loop import Options, run_loop
from ratchetloop.proposers.replay import ReplayProposer
from ratchetloop.proposers.tuner import TunerProposer

FIB = Path(__file__).resolve().parents[1] / "experiments" / "fib"
MEMO = "def fib(n, _cache={0: 0, 1: 1}):\n    if n not in _cache:\n" \
       "        _cache[n] = fib(n - 1) + fib(n - 2)\n    return _cache[n]\n"
ITERATIVE = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n" \
            "    return a\n"
WRONG = "def fib(n):\n    return 999\n"
LRU = "import functools\n\n\n@functools.lru_cache(maxsize=None)\n" \
      "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"


def reply(source: str, note: str) -> str:
    return f"```python\n{source}```\nNote: {note}\n"


@pytest.fixture(autouse=True)
def private_bench_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))


def fib_copy(tmp_path: Path) -> experiment_mod.Experiment:
    repo = tmp_path / "repo"
    shutil.copytree(FIB, repo / "experiments" / "fib",
                    ignore=shutil.ignore_patterns("runs", "winners", "SCORES.*", "MEMORY.*"))
    (repo / "experiments/fib/candidate.py").write_text((FIB / "naive.py").read_text())
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["-c", "user.name=t", "-c",
                 "user.email=t@x", "commit", "-qm", "fib"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return experiment_mod.load(repo / "experiments" / "fib")


def test_scripted_fib_keeps_memo_and_rejects_the_wrong_shortcut(tmp_path):
    exp = fib_copy(tmp_path)
    replies = [reply(MEMO, "memoise with a dict cache"), reply(ITERATIVE, "iterate"),
               reply(WRONG, "shortcut that returns 999"), reply(LRU, "functools.lru_cache")]
    summary = run_loop(exp, ReplayProposer(replies), Options(iterations=4, drift_every=0))
    memo, iterative, wrong, lru = summary.outcomes
    assert memo.status == "accepted_best"  # exponential -> cached: thousands of times faster
    assert memo.ratio is not None and memo.ratio < 0.01
    assert iterative.status == "rejected"  # a loop of 22 steps loses to a warm cache hit
    assert (wrong.status, wrong.failure_kind) == ("failed", "validation_error")
    assert "999" in wrong.message
    # lru_cache vs the dict memo is a close race: the one certain thing is that functools
    # passes security and validation, so timing decides, and the status is that decision
    decided = json.loads((exp.root / "runs" / "0004" / "decision.json").read_text())
    assert lru.status == ("accepted_best" if decided["is_best"] else
                          "accepted_nonbest" if decided["cases_won"] else "rejected")
    assert summary.best is not None and summary.seed is not None
    assert summary.best.score < summary.seed.score / 100
    scores_md = exp.path("SCORES.md").read_text()
    # failed attempts stay off the scoreboard (match the note: any number may contain 999)
    assert "memoise with a dict cache" in scores_md and "returns 999" not in scores_md


def test_tuner_runs_fib_the_same_way(tmp_path):
    exp = fib_copy(tmp_path)
    summary = run_loop(exp, TunerProposer(exp), Options(iterations=5, drift_every=0))
    assert all(o.status != "failed" for o in summary.outcomes)  # every knob is a correct fib
    assert summary.best is not None and summary.seed is not None
    assert summary.best.score < summary.seed.score / 100  # some cached/iterative form won


def test_prompt_shows_scores_to_four_significant_digits() -> None:
    spec = importlib.util.spec_from_file_location("fib_prompt", FIB / "prompt.py")
    assert spec and spec.loader
    prompt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prompt)
    text = prompt.build({
        "experiment_md": "# fib", "incumbent_source": MEMO, "unit": "us",
        "incumbent_score": 4456.907499999999, "seed_score": 1234567.891,
        "specialists": [{"case": "fib22", "score": 0.012345678, "source": ITERATIVE}],
        "memory_md": "## Memory", "last_failure": None,
    })
    assert "Current best (4457 us per suite round; seed 1234568 us):" in text
    assert "Best on case fib22 (0.01235 us), though not best overall:" in text


def test_a_knob_the_template_does_not_know_is_one_clear_error(tmp_path):
    """experiment.json and template.py out of step (a knob value added to one only) crashed
    the run with the template's KeyError traceback; it is a setup error naming the file."""
    from click.testing import CliRunner

    from ratchetloop.cli import main

    exp = fib_copy(tmp_path)
    contract = json.loads(exp.path("experiment.json").read_text())
    contract["knobs"]["strategy"] = ["matrix_power"]
    exp.path("experiment.json").write_text(json.dumps(contract))
    result = CliRunner().invoke(main, ["--root", str(exp.root.parents[1]), "run", "fib",
                                       "--loop", "1"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "template.py: render({'strategy': 'matrix_power'}) failed: KeyError" in result.output
