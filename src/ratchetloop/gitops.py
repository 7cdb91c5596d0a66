"""Git through the `git` command: commit winners (only the experiment's files), find them again."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import RatchetError

IDENTITY = {"GIT_AUTHOR_NAME": "ratchetloop", "GIT_AUTHOR_EMAIL": "ratchetloop@localhost",
            "GIT_COMMITTER_NAME": "ratchetloop", "GIT_COMMITTER_EMAIL": "ratchetloop@localhost"}


def git(repo: Path, *args: str, check: bool = True) -> str:
    env = dict(os.environ)
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        reason = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))),
                      lines[-1] if lines else f"exit {proc.returncode}")
        raise RatchetError(f"git {args[0]} failed: {reason}")
    return proc.stdout


def clear_stale_locks(repo: Path, wait: float = 10.0) -> None:
    """A git killed mid-commit (e.g. with the loop, by SIGKILL) leaves index.lock or a ref
    lock behind and every later commit fails. Wait while a live process holds one; remove it
    once nobody has it open (checked through /proc) and it is not brand new; otherwise say
    what to do."""
    branch = git(repo, "symbolic-ref", "-q", "HEAD", check=False).strip()
    names = ["index.lock", "HEAD.lock"] + ([f"{branch}.lock"] if branch else [])
    for name in names:
        lock = Path(git(repo, "rev-parse", "--git-path", name).strip())
        _clear_stale_lock(lock if lock.is_absolute() else repo / lock, repo, wait)


def _clear_stale_lock(lock: Path, repo: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while lock.exists():
        held = _open_by_some_process(lock)
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if held is False and age >= 1.0:
            lock.unlink(missing_ok=True)
            return
        if time.monotonic() >= deadline:
            raise RatchetError(
                f"{lock} exists: another git process is running in {repo}, or one was killed;"
                " if no git command is running, remove that file and run again")
        time.sleep(0.1)


def _open_by_some_process(path: Path) -> bool | None:
    """Whether any process has `path` open; None when /proc cannot tell."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = str(path.resolve())
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) == target:
                    return True
        except OSError:
            continue
    return False


def repo_root(folder: Path) -> Path:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RatchetError(f"{folder} is not inside a git repository (run `git init` there)")
    return Path(proc.stdout.strip())


def check_branch(repo: Path) -> None:
    proc = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=repo, capture_output=True)
    if proc.returncode != 0:
        raise RatchetError(f"{repo} has a detached HEAD: check out a branch before running")


def _identity_env(repo: Path) -> dict[str, str]:
    """Use the user's identity when configured; fall back to ratchetloop's own."""
    env = dict(os.environ)
    for key, var in (("user.name", "GIT_AUTHOR_NAME"), ("user.email", "GIT_AUTHOR_EMAIL")):
        if not git(repo, "config", key, check=False).strip() and var not in env:
            env[var] = IDENTITY[var]
            env[var.replace("AUTHOR", "COMMITTER")] = IDENTITY[var]
    return env


def commit_paths(repo: Path, paths: Sequence[Path], message: str) -> str:
    """Commit exactly `paths`; whatever else the user has staged or changed stays as it was."""
    rel = [str(Path(p).resolve().relative_to(repo)) for p in paths if Path(p).exists()]
    if not rel:
        raise RatchetError("nothing to commit")
    clear_stale_locks(repo)
    git(repo, "add", "--", *rel)
    proc = subprocess.run(
        ["git", "commit", "--no-verify", "--only", "-q", "-F", "-", "--", *rel],
        cwd=repo, input=message, capture_output=True, text=True, env=_identity_env(repo),
    )
    if proc.returncode != 0:
        if "nothing to commit" in proc.stdout + proc.stderr or "no changes added" in proc.stdout:
            return head(repo)
        raise RatchetError(f"git commit failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return head(repo)


def head(repo: Path, short: bool = True) -> str:
    args = ["rev-parse", "--short=7", "HEAD"] if short else ["rev-parse", "HEAD"]
    return git(repo, *args).strip()


def is_dirty(repo: Path, paths: Sequence[Path]) -> bool:
    rel = [str(Path(p).resolve().relative_to(repo)) for p in paths]
    return bool(git(repo, "status", "--porcelain", "--", *rel).strip())


def accept_commits(repo: Path, experiment: str, folder: Path,
                   since: str | None = None) -> list[tuple[str, dict]]:
    """(short hash, recorded row) of every accept commit of `experiment`, oldest first
    (only those after commit `since`, when given)."""
    rel = str(folder.resolve().relative_to(repo)) or "."
    span = [f"{since}..HEAD"] if since else []
    out = git(repo, "log", "--reverse", "--format=%h%x1f%B%x1e", *span, "--", rel, check=False)
    found = []
    for entry in out.split("\x1e"):
        if "\x1f" not in entry:
            continue
        sha, body = entry.strip().split("\x1f", 1)
        trailer = _trailer(body, "Ratchet-Row")
        if trailer and _trailer(body, "Ratchet-Experiment") == experiment:
            try:
                found.append((sha[:7], json.loads(trailer)))
            except json.JSONDecodeError:
                continue
    return found


def _trailer(body: str, key: str) -> str | None:
    for line in body.splitlines():
        if line.startswith(f"{key}: "):
            return line[len(key) + 2 :].strip()
    return None


def show_file(repo: Path, commit: str, path: Path) -> str | None:
    rel = str(path.resolve().relative_to(repo))
    proc = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=repo, capture_output=True,
                          text=True)
    return proc.stdout if proc.returncode == 0 else None
