"""Read back accepted winners: show the best, restore the candidate file to a winner."""

from __future__ import annotations

import time
from pathlib import Path

from . import gitops
from . import scores as scores_mod
from .errors import RatchetError
from .experiment import Experiment
from .files import atomic_write_text
from .lock import experiment_lock


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
    header = (f"{exp.name} best: {row.score:.2f} {exp.unit} ({row.kind}, commit {row.commit},"
              f" {row.model}): {row.note}")
    return comment(header, exp.target.language), winner_source(exp, row.commit)


def comment(text: str, language: str) -> str:
    """One comment line in the candidate's language, so `ratchet best x > file` builds."""
    line = " ".join(text.split())
    if language == "python":
        return f"# {line}"
    return f"/* {line.replace('*/', '* /')} */"


def rollback(exp: Experiment, commit: str | None) -> str:
    if exp.generic is not None:
        from .generic import winners as generic_winners

        return generic_winners.rollback(exp, commit)
    with experiment_lock(exp.root, "rollback"):  # never under a running loop
        sc = scores_mod.load(exp.root, exp.name, exp.unit, exp.direction)
        target = commit or best_scoring(sc)
        if target != "seed" and sc.row(target) is None:
            sc.rows.append(earlier_winner(exp, target))  # kept in winners/ across seed.py
        atomic_write_text(exp.candidate_path, winner_source(exp, target))
        previous = sc.best_commit or "seed"
        sc.best_commit = None if target == "seed" else target
        sc.rollbacks.append(scores_mod.Rollback(
            timestamp=time.strftime("%Y-%m-%d %H:%M:%S"), to=target, previous=previous))
        scores_mod.save(exp.root, sc)
    return (f"{exp.target.file} restored to winner {target}; it is now the incumbent the next"
            " run times candidates against (recorded in SCORES.md)")


def best_scoring(sc: scores_mod.Scores) -> str:
    """The default target: the best-scoring winner that was ever the best, else the seed
    (after a rollback to an older winner, the best is no longer the incumbent)."""
    bests = [r for r in sc.rows if r.kind == "best"]
    if not bests:
        return "seed"
    lower = sc.direction == "lower_is_better"
    return min(bests, key=lambda r: r.score if lower else -r.score).commit


def earlier_winner(exp: Experiment, commit: str) -> scores_mod.Row:
    """A winner from before `seed.py` reset the scoreboard: its row from its accept commit
    (the trailer), its source from winners/."""
    if not exp.path("winners", commit).is_dir():
        raise RatchetError(f"{commit} is not an accepted winner of {exp.name}")
    repo = gitops.repo_root(exp.root)
    for sha, data in gitops.accept_commits(repo, {exp.folder, exp.name}, exp.root):
        if sha == commit:
            data.pop("specialists_after", None)
            return scores_mod.Row.model_validate({**data, "commit": sha})
    raise RatchetError(f"winners/{commit} has no accept commit in git history to read its"
                       " score from")
