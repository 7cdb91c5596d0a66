"""The experiments that ship with ratchetloop, and `ratchet new`: copy one into a project.

A wheel carries them as package data (ratchetloop/_experiments/<name>, mapped from the
clone's experiments/ by pyproject.toml); an editable install reads the clone's experiments/
folder itself. Either way they are templates: the loop never runs or commits inside them,
it runs in the copy `ratchet new` makes in the user's own git repository.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from . import gitops
from .errors import RatchetError
from .files import atomic_write_text

PACKAGE_DIR = Path(__file__).resolve().parent
# Run state and build output: never part of a template, never copied.
STATE = ("SCORES.*", "MEMORY.*", "runs", "winners", "report.*", "results.tsv", "__pycache__",
         ".ratchet.lock*", ".ratchet.status.json", "branch.json", "trials.json", "*.bundle",
         "*.pyc", "*.o", "*.so", "*.bin")
# What the copy's own .gitignore keeps out of the user's repository (SCORES, MEMORY and
# winners/ are the record: the loop commits them).
IGNORED = ("runs/", ".ratchet.lock", ".ratchet.lock.holder", ".ratchet.status.json",
           "report.html", "report.png", "__pycache__/", "*.o", "*.so", "*.bin")


def shipped_root() -> Path:
    """Where the shipped experiments are: the wheel's package data, else the clone's folder."""
    for folder in (PACKAGE_DIR / "_experiments", PACKAGE_DIR.parents[1] / "experiments"):
        if folder.is_dir():
            return folder
    raise RatchetError(f"this installation of ratchetloop ({PACKAGE_DIR}) has no shipped"
                       " experiments: reinstall it from a wheel or the repository")


def shipped() -> dict[str, str]:
    """name -> one-line description, for every shipped folder with an experiment.json."""
    root = shipped_root()
    found = {}
    for contract in sorted(root.glob("*/experiment.json")):
        try:
            description = str(json.loads(contract.read_text(encoding="utf-8"))
                               .get("description", ""))
        except (OSError, ValueError):
            description = "(unreadable experiment.json)"
        found[contract.parent.name] = " ".join(description.split())
    return found


def describe() -> list[str]:
    """`ratchet new --list`: one line per shipped experiment."""
    names = shipped()
    width = max((len(n) for n in names), default=0)
    return [f"{name:<{width}}  {text}".rstrip() for name, text in names.items()]


def git_toplevel(folder: Path) -> Path | None:
    """The git work tree `folder` (or its nearest existing parent) belongs to, if any."""
    probe = next(p for p in (folder, *folder.parents) if p.is_dir())
    try:
        return gitops.repo_root(probe)
    except RatchetError:
        return None


def new(name: str, dest: Path | None = None, cwd: Path | None = None) -> Path:
    """Copy shipped experiment `name` to `dest` (default experiments/<name> under `cwd`),
    with the candidate reset to the naive seed, and commit it (only it): winners are commits
    on top of it, and a repository without commits yet gets its first one. Refuses to
    overwrite; returns the folder."""
    names = shipped()
    if name not in names:
        raise RatchetError(f"no shipped experiment {name!r}: ratchetloop ships "
                           f"{', '.join(names) or 'none'} (see `ratchet new --list`)")
    base = (cwd or Path.cwd()).resolve()
    target = Path(os.path.abspath(base / (dest or Path("experiments") / name)))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RatchetError(f"{target} already exists: not overwriting it (give another DIR,"
                           " or move it away first)")
    repo = git_toplevel(target.parent)
    if repo is None:
        where = next(p for p in target.parents if p.is_dir())
        raise RatchetError(f"{where} is not inside a git repository: winners are commits, so"
                           " run `git init` there first (or give a DIR inside a repository)")
    source = shipped_root() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build the copy beside its place and rename it in: a failed copy leaves nothing behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        copy = staging / name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(*STATE))
        _reset_candidate(copy)
        write_gitignore(copy / ".gitignore")
        if target.exists():
            target.rmdir()  # empty, checked above
        copy.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    from . import __version__

    gitops.commit_paths(repo, [target], f"Add experiment {target.name} (ratchet new {name},"
                        f" ratchetloop {__version__})")
    return target


def write_gitignore(path: Path) -> None:
    """The copy's .gitignore: the experiment's own (a generic one keeps its whole state out
    of git) plus the run state every experiment has."""
    own = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    extra = [line for line in IGNORED if line not in own]
    lines = own + (["# ratchetloop: run state and build output", *extra] if extra else [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _reset_candidate(folder: Path) -> None:
    """A new experiment starts from its seed, even if the template's candidate was a winner."""
    contract = json.loads((folder / "experiment.json").read_text(encoding="utf-8"))
    naive, live = contract.get("naive"), contract.get("target", {}).get("file")
    if naive and live and (folder / naive).is_file() and (folder / live).is_file():
        atomic_write_text(folder / live, (folder / naive).read_text(encoding="utf-8"))


def run_hint(folder: Path, cwd: Path | None = None) -> str:
    """The command that runs `folder`: by name where discovery finds it, else by path."""
    base = (cwd or Path.cwd()).resolve()
    if folder == base / "experiments" / folder.name:
        return f"ratchet run {folder.name}"
    try:
        return f"ratchet run {folder.relative_to(base)}"
    except ValueError:
        return f"ratchet run {folder}"
