"""Read back accepted winners: show the best, restore the candidate file to a winner."""

from __future__ import annotations

from pathlib import Path

from . import scores as scores_mod
from .errors import RatchetError
from .experiment import Experiment
from .files import atomic_write_text


def winner_source(exp: Experiment, commit: str) -> str:
    if commit == "seed":
        return exp.naive_path.read_text(encoding="utf-8")
    path = exp.path("winners", commit, Path(exp.target.file).name)
    if not path.is_file():
        raise RatchetError(f"no archived winner {commit} in {exp.path('winners')}")
    return path.read_text(encoding="utf-8")


def best_source(exp: Experiment) -> tuple[str, str]:
    if exp.generic is not None:  # winners live on the ratchet/<tag> branch
        from .generic import winners as generic_winners

        return generic_winners.best(exp)
    sc = scores_mod.load(exp.root, exp.name, exp.unit, exp.direction)
    row = sc.best
    if row is None:
        raise RatchetError(f"{exp.name} has no results yet: run `ratchet run {exp.name}`")
    header = (f"# {exp.name} best: {row.score:.2f} {exp.unit} ({row.kind}, commit {row.commit},"
              f" {row.model}): {row.note}")
    return header, winner_source(exp, row.commit)


def rollback(exp: Experiment, commit: str | None) -> str:
    if exp.generic is not None:
        from .generic import winners as generic_winners

        return generic_winners.rollback(exp, commit)
    sc = scores_mod.load(exp.root, exp.name, exp.unit, exp.direction)
    target = commit or sc.best_commit or "seed"
    if target != "seed" and sc.row(target) is None:
        raise RatchetError(f"{target} is not an accepted winner of {exp.name}")
    atomic_write_text(exp.candidate_path, winner_source(exp, target))
    return f"{exp.target.file} restored to winner {target}"
