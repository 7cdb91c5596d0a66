"""State on disk: seed.py reset, SCORES.md from SCORES.json, MEMORY.md under its cap,
restoring winners from git after a run died between commit and record."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import ITERATIVE, PYTHON, git, reply, slow_fib

from ratchetloop import experiment as experiment_mod
from ratchetloop import memory as memory_mod
from ratchetloop import scores as scores_mod
from ratchetloop.loop import Options, run_loop
from ratchetloop.proposers.replay import ReplayProposer


def run(folder: Path, replies: list[str]):
    exp = experiment_mod.load(folder)
    return run_loop(exp, ReplayProposer(replies), Options(iterations=len(replies),
                                                          drift_every=0))


def test_seed_py_resets_state_and_keeps_winners_and_history(fib: Path) -> None:
    repo = fib.parents[1]
    summary = run(fib, [reply(ITERATIVE, "iterate"), "no code"])
    sha = summary.outcomes[0].commit
    assert sha and (fib / "candidate.py").read_text() == ITERATIVE
    log_before = git(repo, "log", "--format=%H")
    proc = subprocess.run([PYTHON, str(fib / "seed.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "seeded" in proc.stdout
    assert (fib / "candidate.py").read_text() == (fib / "naive.py").read_text()
    for name in ("MEMORY.json", "MEMORY.md", "runs"):
        assert not (fib / name).exists(), name
    fresh = json.loads((fib / "SCORES.json").read_text())  # empty, remembers the reset point
    assert fresh["seed"] is None and fresh["rows"] == [] and fresh["counts"]["attempts"] == 0
    assert fresh["reset_at"] == git(repo, "rev-parse", "HEAD").strip()
    assert (fib / "winners" / sha / "candidate.py").read_text() == ITERATIVE
    assert git(repo, "log", "--format=%H") == log_before
    # a fresh run measures the seed again and numbers attempts from 1 ...
    summary = run(fib, ["no code this time"])
    assert summary.outcomes[0].iteration == 1
    # ... and does not resurrect the pre-seed winner from git into the new scoreboard
    sc = json.loads((fib / "SCORES.json").read_text())
    assert sc["seed"] is not None
    assert sc["rows"] == [] and sc["best_commit"] is None, sc["rows"]


def test_scores_md_is_regenerated_identically(fib: Path) -> None:
    run(fib, [reply(slow_fib(20000), "burn less"), reply(ITERATIVE, "no burn"),
              "no code"])
    md = (fib / "SCORES.md").read_text()
    sc = scores_mod.load(fib, "fib", "us", "lower_is_better")
    assert scores_mod.render(sc) == md
    (fib / "SCORES.md").unlink()
    scores_mod.save(fib, sc)
    assert (fib / "SCORES.md").read_text() == md
    # and the JSON round-trips byte for byte
    before = (fib / "SCORES.json").read_text()
    scores_mod.save(fib, scores_mod.load(fib, "fib", "us", "lower_is_better"))
    assert (fib / "SCORES.json").read_text() == before
    assert md.count("| replay |") == 2 and "seeded baseline winner" in md


def test_memory_md_stays_under_its_cap() -> None:
    mem = memory_mod.Memory()
    mem.add_hypotheses([f"hypothesis number {i} about tiling" for i in range(30)])
    for i in range(2000):
        mem.record_failure(i, f"kind{i % 40}", f"error {i}: something broke in case {i % 7}"
                           f" {'x' * (i % 50)} unique-{i % 97}-token", "", f"note {i}")
        mem.record_tried(i, f"tried idea {i} " + "y" * 100, 0.9)
        if i % 50 == 0:
            mem.record_worked(memory_mod.Worked(iteration=i, model="m", note=f"win {i} " * 20,
                                                kind="best", speedup=1.5, score=1.0))
        mem.add_ideas([f"idea {i}"])
    text = mem.render()
    assert len(text) <= memory_mod.MEMORY_MD_LIMIT
    assert "## What has worked" in text and "## What keeps failing" in text
    assert len(mem.tried) <= 200 and len(mem.unexplored) <= 70


def test_memory_md_under_cap_after_a_real_run_of_failures(fib: Path) -> None:
    replies = [f"no code, attempt {i} " + "w" * 300 for i in range(40)]
    replies += [reply(f"def fib(n):\n    return {i}\n", f"constant {i} " + "z" * 150)
                for i in range(3, 7)]
    run(fib, replies)
    md = (fib / "MEMORY.md").read_text()
    assert len(md) <= memory_mod.MEMORY_MD_LIMIT
    mem = memory_mod.load(fib)
    assert mem.render() == md
    kinds = {g.kind: g.count for g in mem.failing.values()}
    assert kinds["no_code"] == 40 and kinds["validation_error"] == 4
    # wrong results with different numbers share one signature
    assert sum(1 for g in mem.failing.values() if g.kind == "validation_error") == 1


def test_winner_committed_but_not_recorded_is_restored(fib: Path) -> None:
    """A run that died between the Accept commit and the state write loses nothing."""
    repo = fib.parents[1]
    summary = run(fib, [reply(ITERATIVE, "iterate")])
    sha = summary.outcomes[0].commit
    sc = json.loads((fib / "SCORES.json").read_text())
    # simulate the crash window: state as it was before the accept, no archive
    sc["rows"], sc["best_commit"] = [], None
    sc["counts"]["accepted"] = 0
    (fib / "SCORES.json").write_text(json.dumps(sc))
    mem = json.loads((fib / "MEMORY.json").read_text())
    mem["seen"] = {k: v for k, v in mem["seen"].items() if not v.startswith("accepted")}
    (fib / "MEMORY.json").write_text(json.dumps(mem))
    import shutil
    shutil.rmtree(fib / "winners")
    summary = run(fib, [reply(ITERATIVE, "iterate again")])
    assert summary.outcomes[0].status == "duplicate"  # memory learnt it from git
    sc = json.loads((fib / "SCORES.json").read_text())
    assert [r["commit"] for r in sc["rows"]] == [sha] and sc["best_commit"] == sha
    assert sc["counts"]["accepted"] == 1
    assert (fib / "winners" / sha / "candidate.py").read_text() == ITERATIVE
    assert git(repo, "log", "--format=%h", "--grep", "^Ratchet-Row").split() == [sha]


def test_atomic_writes_keep_permissions_like_a_plain_write(tmp_path: Path) -> None:
    """mkstemp's 0600 made every SCORES.md, report.html and candidate file unreadable to the
    group: a new file gets the umask's mode, a rewritten file keeps the mode it had."""
    import os

    from ratchetloop.files import atomic_write_text

    fresh = tmp_path / "SCORES.md"
    atomic_write_text(fresh, "x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~mask
    script = tmp_path / "run.sh"
    script.write_text("old")
    script.chmod(0o751)
    atomic_write_text(script, "new", durable=False)
    assert script.stat().st_mode & 0o777 == 0o751 and script.read_text() == "new"


def test_winner_recorded_in_scores_but_not_in_memory_is_remembered(fib: Path) -> None:
    """A run killed between the SCORES write and the MEMORY write: the next run's memory
    knows the winner again (from its commit), so the same code is a duplicate."""
    summary = run(fib, [reply(ITERATIVE, "iterate")])
    sha = summary.outcomes[0].commit
    mem = json.loads((fib / "MEMORY.json").read_text())
    mem["seen"] = {k: v for k, v in mem["seen"].items() if not v.startswith("accepted")}
    (fib / "MEMORY.json").write_text(json.dumps(mem))
    summary = run(fib, [reply(ITERATIVE, "iterate again")])
    assert summary.outcomes[0].status == "duplicate"
    seen = json.loads((fib / "MEMORY.json").read_text())["seen"].values()
    assert f"accepted {sha}" in seen
