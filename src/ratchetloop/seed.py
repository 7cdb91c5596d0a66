"""Fresh search state: reset candidate, scores, memory and runs; keep git history and winners/."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import experiment as experiment_mod
from . import gitops
from . import scores as scores_mod
from .display import run_cli_guarded
from .files import atomic_write_text
from .lock import experiment_lock


def reset(folder: Path | str) -> list[str]:
    """Returns what was reset, for the caller to print."""
    exp = experiment_mod.load(str(folder))
    done = []
    with experiment_lock(exp.root, "seed"):
        atomic_write_text(exp.candidate_path, exp.naive_path.read_text(encoding="utf-8"))
        done.append(f"{exp.target.file} <- {exp.naive}")
        for name in ("SCORES.json", "SCORES.md", "MEMORY.json", "MEMORY.md",
                     "STRATEGY.json", "STRATEGY.md"):  # the outer loop starts over too
            path = exp.path(name)
            if path.exists():
                path.unlink()
                done.append(f"removed {name}")
        runs = exp.path("runs")
        if runs.exists():
            shutil.rmtree(runs)
            done.append("removed runs/")
        # without this marker the next run would restore every earlier winner from git
        head = gitops.git(exp.root, "rev-parse", "-q", "--verify", "HEAD", check=False).strip()
        if head:
            scores_mod.save(exp.root, scores_mod.Scores(
                experiment=exp.name, unit=exp.unit, direction=exp.direction, reset_at=head))
    return done


def main(folder: Path | str) -> None:
    """Entry point for experiments' seed.py files (errors read as the CLI's: one line, exit 2)."""
    def _do() -> None:
        for line in reset(folder):
            print(line)
        print("seeded: the next run measures the seed baseline; git history and winners/ kept")

    run_cli_guarded(_do)
