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
    if check:
        _raise_for(proc, args[0])
    return proc.stdout


def _raise_for(proc: subprocess.CompletedProcess[str], command: str) -> None:
    """A failed git command as one line: its fatal:/error: line, else its last line."""
    if proc.returncode == 0:
        return
    lines = proc.stderr.strip().splitlines()
    reason = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))),
                  lines[-1] if lines else f"exit {proc.returncode}")
    raise RatchetError(f"git {command} failed: {reason}")


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


# ------------------------------------------------------------------ hardened plumbing
#
# For generic mode (ratchetloop.generic.worktree): git is pointed at the repository's git
# dir with explicit --git-dir/--work-tree, never at a directory a candidate wrote, and with
# everything that could execute a program switched off on the command line.

HARDENED_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false",
                   "core.untrackedCache=false", "gc.auto=0", "maintenance.auto=false",
                   "core.pager=cat", "protocol.allow=never")
# Variables that would redirect git away from the paths we give it, or run programs.
_UNSAFE_GIT_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
                   "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                   "GIT_EXTERNAL_DIFF", "GIT_PAGER", "PAGER", "GIT_EDITOR", "EDITOR", "VISUAL",
                   "GIT_SEQUENCE_EDITOR", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS",
                   "SSH_ASKPASS", "GIT_PROXY_COMMAND", "GIT_CONFIG_PARAMETERS",
                   "GIT_CONFIG_COUNT")


def common_dir(repo: Path) -> Path:
    """The repository's (common) git dir, absolute."""
    common = Path(git(repo, "rev-parse", "--git-common-dir").strip())
    return (common if common.is_absolute() else Path(repo) / common).resolve()


def plumb(git_dir: Path, *args: str, work_tree: Path, index: Path | None = None,
          input: str | None = None, env: dict[str, str] | None = None,
          check: bool = True) -> str:
    """`git --git-dir=G --work-tree=W -c <hardening> ARGS`, run from inside G.

    `work_tree` is required so git never falls back to the current directory or to
    core.worktree; callers pass an empty directory of their own unless a command must write
    files (checkout-index into a fresh directory). No hook, fsmonitor, pager, editor,
    external diff, auto-gc or transport can run."""
    base = dict(env) if env is not None else dict(os.environ)
    clean = {k: v for k, v in base.items()
             if k not in _UNSAFE_GIT_ENV and not k.startswith("GIT_CONFIG_KEY_")
             and not k.startswith("GIT_CONFIG_VALUE_")}
    clean["GIT_TERMINAL_PROMPT"] = "0"
    if index is not None:
        clean["GIT_INDEX_FILE"] = str(index)
    argv = ["git", f"--git-dir={git_dir}", f"--work-tree={work_tree}", "--no-replace-objects"]
    for item in HARDENED_CONFIG:
        argv += ["-c", item]
    proc = subprocess.run([*argv, *args], cwd=git_dir, capture_output=True, text=True,
                          input=input, env=clean)
    if check:
        _raise_for(proc, args[0])
    return proc.stdout


def read_blobs(git_dir: Path, void: Path, commit: str, paths: Sequence[str]) -> dict[str, str]:
    """Files of `commit` as stored (no filters, no textconv); "" for a missing path."""
    return {p: plumb(git_dir, "cat-file", "blob", f"{commit}:{p}", work_tree=void, check=False)
            for p in paths}


def export_tree(git_dir: Path, commit: str, dest: Path, index: Path) -> None:
    """A fresh checkout of `commit` into the empty directory `dest` (a private index file,
    never the repository's). Smudge/eol filters the user configured apply, exactly as in
    their own checkout of that commit."""
    index.unlink(missing_ok=True)
    plumb(git_dir, "read-tree", commit, work_tree=dest, index=index)
    plumb(git_dir, "checkout-index", "--all", "--force", "--quiet", work_tree=dest, index=index)
    index.unlink(missing_ok=True)


def commit_files(repo: Path, git_dir: Path, void: Path, branch: str,
                 files: dict[str, str], message: str, index: Path) -> str:
    """One commit on `branch` replacing exactly `files` in its tip's tree, without a work
    tree: hash-object (no filters), a private index, write-tree, commit-tree and a
    compare-and-swap update-ref. No hook runs. Returns the short hash (the tip itself
    when nothing changed)."""
    ref = f"refs/heads/{branch}"
    parent = plumb(git_dir, "rev-parse", "--verify", f"{ref}^{{commit}}", work_tree=void).strip()
    index.unlink(missing_ok=True)
    try:
        plumb(git_dir, "read-tree", parent, work_tree=void, index=index)
        listed = plumb(git_dir, "ls-tree", "-z", parent, "--", *files, work_tree=void)
        modes = {}
        for entry in filter(None, listed.split("\0")):
            meta, path = entry.split("\t", 1)
            modes[path] = meta.split()[0]
        for path, text in sorted(files.items()):
            mode = modes.get(path, "100644")
            if mode not in ("100644", "100755"):
                raise RatchetError(f"{path} is not a regular file in {branch} ({mode})")
            sha = plumb(git_dir, "hash-object", "-w", "--no-filters", "--stdin",
                        work_tree=void, input=text).strip()
            plumb(git_dir, "update-index", "--add", "--cacheinfo", f"{mode},{sha},{path}",
                  work_tree=void, index=index)
        tree = plumb(git_dir, "write-tree", work_tree=void, index=index).strip()
    finally:
        index.unlink(missing_ok=True)
    if tree == plumb(git_dir, "rev-parse", f"{parent}^{{tree}}", work_tree=void).strip():
        return parent[:7]
    commit = plumb(git_dir, "commit-tree", tree, "-p", parent, "-F", "-", work_tree=void,
                   input=message, env=_identity_env(repo)).strip()
    plumb(git_dir, "update-ref", "-m", "ratchet: accept winner", ref, commit, parent,
          work_tree=void)
    return commit[:7]
