"""`ratchet best` / `ratchet rollback` for generic projects: winners live on ratchet/<tag>.

Git runs through gitops.plumb (explicit git dir, hooks/fsmonitor off, diffs without
external diff or textconv drivers); files are only written for editable paths.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import gitops
from .. import scores as scores_mod
from ..errors import RatchetError
from ..experiment import Experiment
from ..files import atomic_write_json, atomic_write_text
from .contract import spec_of
from .edits import files_of


def _branch(exp: Experiment) -> dict[str, str]:
    path = exp.path("branch.json")
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def _void(repo: Path) -> tuple[Path, Path]:
    git_dir = gitops.common_dir(repo)
    void = git_dir / "ratchet" / "void-cli"
    void.mkdir(parents=True, exist_ok=True)
    return git_dir, void


def winner_files(exp: Experiment, commit: str) -> dict[str, str]:
    editable = spec_of(exp).editable
    if commit == "seed":
        return files_of(exp.naive_path.read_text("utf-8"), editable)
    archived = exp.path("winners", commit, "candidate.bundle")
    if archived.is_file():
        return files_of(archived.read_text("utf-8"), editable)
    git_dir, void = _void(gitops.repo_root(exp.root))
    return gitops.read_blobs(git_dir, void, commit, editable)


def best(exp: Experiment) -> tuple[str, str]:
    """A header and the diff from the starting point to the best winner."""
    sc = scores_mod.load(exp.root, exp.name, exp.unit, exp.direction)
    row = sc.best
    if row is None:
        raise RatchetError(f"{exp.name} has no results yet: run `ratchet run {exp.name}`")
    info = _branch(exp)
    header = (f"# {exp.name} best: {row.score:.6g} {exp.unit} (commit {row.commit} on"
              f" {info.get('branch', '?')}, {row.model}): {row.note}\n"
              f"# take it: `ratchet rollback {exp.name}` (writes the files) or"
              f" `git merge {info.get('branch', '<branch>')}`")
    if row.commit == "seed":
        return header, ""
    git_dir, void = _void(gitops.repo_root(exp.root))
    diff = gitops.plumb(git_dir, "diff", "--no-ext-diff", "--no-textconv", "--no-color",
                        info.get("base", "HEAD"), row.commit, "--", *spec_of(exp).editable,
                        work_tree=void, check=False)
    return header, diff


def rollback(exp: Experiment, commit: str | None) -> str:
    """Write a winner's editable files into the user's working tree (never commits)."""
    sc = scores_mod.load(exp.root, exp.name, exp.unit, exp.direction)
    target = commit or sc.best_commit or "seed"
    if (target != "seed" and sc.row(target) is None
            and not exp.path("winners", target).is_dir()):  # winners/ outlives seed.py
        raise RatchetError(f"{target} is not an accepted winner of {exp.name}")
    repo = gitops.repo_root(exp.root)
    files = winner_files(exp, target)
    written = _written(exp)
    changed = [rel for rel in files if gitops.is_dirty(repo, [repo / rel])
               and _digest(repo / rel) != written.get(rel)]
    if changed:  # the user's own edits; what an earlier rollback wrote may be replaced
        raise RatchetError(f"{', '.join(changed)} have uncommitted changes: commit or stash"
                           " first")
    for rel, text in files.items():
        path = repo / rel
        mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o644
        atomic_write_text(path, text)
        path.chmod(mode)  # the user's file keeps its permissions
    atomic_write_json(exp.path("rollback.json"),
                      {"to": target, "files": {rel: _sha256(text.encode("utf-8"))
                                                 for rel, text in files.items()}})
    return f"{', '.join(sorted(files))} restored to winner {target} (not committed)"


def _digest(path: Path) -> str | None:
    return _sha256(path.read_bytes()) if path.is_file() else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _written(exp: Experiment) -> dict[str, str]:
    """What the last `ratchet rollback` wrote (file -> sha256), so a second one may replace it."""
    path = exp.path("rollback.json")
    try:
        files = json.loads(path.read_text("utf-8")).get("files", {}) if path.is_file() else {}
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}
