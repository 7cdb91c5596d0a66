"""The shipped train experiment, for real: copied into a fresh git repository by `ratchet new`
(here at a different depth than in the clone), trained for 3 s a trial,
searched by the offline tuner; the model file cannot touch the harness."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from generic_helpers import git, make_project

from ratchetloop import experiment as experiment_mod
from ratchetloop import shipped
from ratchetloop.generic import session_parts
from ratchetloop.generic.results import read_rows
from ratchetloop.generic.trialtime import set_trial_seconds
from ratchetloop.loop import Options, QuietReporter, Summary, run_loop
from ratchetloop.proposers.replay import ReplayProposer
from ratchetloop.proposers.tuner import TunerProposer

BUDGET = 3.0  # seconds a trial (the shipped contract says 30); start-up is part of it
SHIPPED = Path(__file__).resolve().parents[1] / "experiments" / "train"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Summary]]:
    """Two tuner iterations at a 3 s trial budget, in a copy of the shipped folder."""
    root = tmp_path_factory.mktemp("train")
    repo = make_project(root, {"README.md": "a user's project\n"})
    folder = shipped.new("train", Path("lab/mytrain"), cwd=repo)  # `ratchet new`, for real
    contract = json.loads((folder / "experiment.json").read_text())
    contract["acceptance"]["mode"] = "known_noise"  # as at 30 s: one run a candidate
    (folder / "experiment.json").write_text(json.dumps(contract, indent=2))
    git(repo, "commit", "-qam", "one run a candidate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RATCHET_BENCH_LOCK", str(root / "bench.lock"))
        exp = experiment_mod.load(folder)
        set_trial_seconds(exp, BUDGET)  # what `ratchet run --trial-seconds 2` does
        reporter, workspace = session_parts(exp, QuietReporter())
        summary = run_loop(exp, TunerProposer(exp), Options(iterations=2), reporter, workspace)
        yield folder, summary


def test_tuner_lowers_validation_loss_in_a_copied_folder(trained: tuple[Path, Summary]) -> None:
    folder, summary = trained
    assert [o.failure_kind for o in summary.outcomes if o.status == "failed"] == []
    assert any(o.accepted for o in summary.outcomes)
    assert summary.seed is not None and summary.best is not None
    assert summary.best.score < summary.seed.score  # validation loss went down
    repo = folder.parents[1]
    winner = git(repo, "show", "ratchet/train:lab/mytrain/model.py")
    assert winner != (folder / "model.py").read_text()  # the branch holds the new model
    assert git(repo, "status", "--porcelain").strip() == ""  # state ignored, tree untouched

    rows = read_rows(folder / "results.tsv")
    assert len(rows) == 2 and all(float(r["steps"]) > 0 for r in rows)
    assert all(0 < float(r["val_accuracy"]) < 1 and float(r["peak_rss_mb"]) > 20 for r in rows)
    log = (folder / "runs/0001/candidate_last.log").read_text()
    report = json.loads(log.strip().splitlines()[-1])
    assert report["budget_seconds"] == BUDGET  # RATCHET_TRIAL_SECONDS reached the harness
    assert summary.seed.metrics["steps"] > 0 and "peak_rss_mb" in summary.seed.metrics


def test_the_model_cannot_edit_the_harness(trained: tuple[Path, Summary]) -> None:
    folder, _ = trained
    repo = folder.parents[1]
    harness = git(repo, "show", "ratchet/train:lab/mytrain/harness.py")
    model = (folder / "model.py").read_text()
    tamper = ("import pathlib\npathlib.Path(__file__).with_name('harness.py')"
              ".write_text('print(0.0)\\n')\n")
    replies = [f"File: model.py\n```python\n{tamper}{model}```\nNote: rewrite the harness\n",
               "File: harness.py\n```python\nprint('val_loss 0.0')\n```\nNote: easier exam\n"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RATCHET_BENCH_LOCK", str(folder.parents[2] / "bench.lock"))
        exp = experiment_mod.load(folder)
        set_trial_seconds(exp, BUDGET)
        reporter, workspace = session_parts(exp, QuietReporter())
        summary = run_loop(exp, ReplayProposer(replies), Options(iterations=2), reporter,
                           workspace)
    assert [(o.status, o.failure_kind) for o in summary.outcomes] == [
        ("failed", "integrity"), ("failed", "outside_editable")]
    assert "harness.py" in summary.outcomes[0].message
    assert git(repo, "show", "ratchet/train:lab/mytrain/harness.py") == harness
    assert (folder / "harness.py").read_text() == harness


def test_sigterm_at_the_budget_still_scores_and_reports(tmp_path: Path) -> None:
    """The loop stops a trial with SIGTERM at its budget: training ends, the run reports."""
    import os
    import signal
    import subprocess
    import sys

    for name in ("harness.py", "model.py"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    proc = subprocess.Popen([sys.executable, "harness.py"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE,
                            env={**os.environ, "RATCHET_TRIAL_SECONDS": "600"})
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("data: ")  # the data exists; training starts
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    report = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0 and report["stopped_early"] is True
    assert report["train_seconds"] < report["train_budget_seconds"]
    assert 0 < report["val_loss"] < 10


def test_shipped_model_is_the_templates_seed_rendering() -> None:
    """model.py is template.render(SEED): the tuner's seed is what the experiment ships."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_template", SHIPPED / "template.py")
    assert spec is not None and spec.loader is not None
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    assert (SHIPPED / "model.py").read_text() == template.render(template.SEED)
