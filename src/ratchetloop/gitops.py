"""Git through the `git` command: commit winners (only the experiment's files), find them again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


# ------------------------------------------------------------------ git's lock files
#
# A git killed mid-commit leaves index.lock (or HEAD.lock, <branch>.lock) behind and every
# later commit fails. Whether anyone still holds such a file cannot be read off the file:
# `git commit -a` keeps index.lock with no descriptor open while it waits for the user's
# editor. So the loop removes a lock only when it is provably its own:
#   (a) commit_paths touches a marker, <git dir>/ratchetloop-commit.<pid>.<start>, before its
#       first git command and removes it after the last; a marker whose process is gone
#       (pid dead, or reused: the start time differs) means a loop died while committing;
#   (b) the lock is no older than that marker: it appeared while that loop was committing;
#   (c) no git process is running in this repository now (its cwd, command line or GIT_*
#       variables point into the repository; one whose /proc entries cannot be read counts).
# Any other lock is waited for, then named in a RatchetError saying what to do. Without
# /proc (macOS) (c) cannot be shown, so nothing is ever removed there.

MARKER_PREFIX = "ratchetloop-commit."


@dataclass(frozen=True)
class CommitContext:
    """What every commit in one repository needs, found once (a git process costs ~4 ms):
    where its locks live and who commits. A run keeps one; its branch does not change."""

    git_dir: Path
    locks: tuple[Path, ...]  # index.lock, HEAD.lock, and the current branch's ref lock
    env: dict[str, str]

    @classmethod
    def of(cls, repo: Path) -> CommitContext:
        out = git(repo, "rev-parse", "--absolute-git-dir", "--git-common-dir",
                  "--symbolic-full-name", "HEAD", check=False).splitlines()
        if len(out) < 2:  # not a repository: git's own one-line failure
            git(repo, "rev-parse", "--absolute-git-dir")
        gdir = Path(out[0])
        common = Path(out[1]) if Path(out[1]).is_absolute() else Path(repo) / out[1]
        ref = out[2].strip() if len(out) > 2 and out[2].startswith("refs/") else ""
        if not ref:  # detached, or a branch with no commit yet (`ratchet new` in a new repo)
            ref = git(repo, "symbolic-ref", "-q", "HEAD", check=False).strip()
        locks = [gdir / "index.lock", gdir / "HEAD.lock"]
        if ref:
            locks.append(common.resolve() / f"{ref}.lock")
        return cls(gdir, tuple(locks), _identity_env(repo))


def clear_stale_locks(repo: Path, wait: float = 10.0,
                      context: CommitContext | None = None) -> None:
    """Before committing: remove the locks a killed loop left (see above), and wait up to
    `wait` seconds for any other lock to go away; then stop with a message naming it."""
    dirs = context or CommitContext.of(repo)
    deadline = time.monotonic() + wait
    for lock in dirs.locks:
        if lock.exists():
            _clear_stale_lock(lock, repo, dirs.git_dir, deadline)
    for marker in _dead_markers(dirs.git_dir):  # no lock left that a dead loop could vouch for
        marker.unlink(missing_ok=True)


def _clear_stale_lock(lock: Path, repo: Path, gdir: Path, deadline: float) -> None:
    while lock.exists():
        if _left_by_dead_loop(lock, repo, gdir):
            lock.unlink(missing_ok=True)
            return
        if time.monotonic() >= deadline:
            running = _git_running_in(repo, gdir)
            who = (f"git is running in {repo}: pid {running[0]}, `{running[1][:80]}`"
                   if running else "no ratchet commit was under way when it was made")
            raise RatchetError(
                f"{lock} exists and is not the loop's to remove ({who}). Finish that git "
                "command (a `git commit` waiting for its editor holds it); if no git command "
                "is running, remove the file and run again")
        time.sleep(0.1)  # a short git command (status, add) releases it soon


def _left_by_dead_loop(lock: Path, repo: Path, gdir: Path) -> bool:
    """(a), (b) and (c) above."""
    try:
        made = lock.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    if not _proc_readable() or not any(_mtime_ns(m) <= made for m in _dead_markers(gdir)):
        return False
    return _git_running_in(repo, gdir) is None


@contextmanager
def _committing(gdir: Path) -> Iterator[None]:
    """Mark this process as committing in the repository of `gdir`, so a lock its git
    leaves when both are killed can be told apart from one a user's git holds."""
    pid = os.getpid()
    marker = gdir / f"{MARKER_PREFIX}{pid}.{_start_time(pid) or 0}"
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def _dead_markers(gdir: Path) -> list[Path]:
    dead = []
    for marker in gdir.glob(f"{MARKER_PREFIX}*"):
        pid, _, start = marker.name[len(MARKER_PREFIX):].partition(".")
        if pid.isdigit() and start.isdigit() and not _alive(int(pid), int(start)):
            dead.append(marker)
    return dead


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 1 << 62  # gone meanwhile: vouches for nothing


def _proc_readable() -> bool:
    return Path("/proc/self/cwd").exists()


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot at which `pid` started (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


def _alive(pid: int, start: int) -> bool:
    """Whether the process that wrote a marker still runs (not merely its pid, reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    return now is None or not start or now == start


def _git_running_in(repo: Path, gdir: Path) -> tuple[int, str] | None:
    """(pid, command line) of a live git process working in this repository, else None.

    A git process whose cwd, command line or environment cannot be read counts as running
    here: the answer must never be a wrong "no"."""
    common = common_dir(repo)
    roots = {str(p) for p in (repo.resolve(), gdir.resolve(), common,
                              common.parent if common.name == ".git" else common)}

    def inside(text: str) -> bool:  # a path, or an option such as --git-dir=<path>
        return any(text == r or text.endswith(f"={r}") or f"{r}{os.sep}" in text
                   for r in roots)

    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if not (entry / "comm").read_text().startswith("git"):
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # exited meanwhile
        command = " ".join(a for a in argv if a)
        try:
            cwd = os.readlink(entry / "cwd")
            env = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except FileNotFoundError:
            continue
        except OSError:
            return int(entry.name), command  # another user's git: cannot tell where
        git_env = [v.partition("=")[2] for v in env if v.startswith("GIT_")]
        if inside(cwd) or any(inside(a) for a in argv + git_env):
            return int(entry.name), command
    return None


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
    if not git(repo, "rev-parse", "-q", "--verify", "HEAD", check=False).strip():
        raise RatchetError(f"{repo} has no commits yet: commit the experiment first (`git add"
                           " -A && git commit -m start`; `ratchet new` does this for you)")


def _identity_env(repo: Path) -> dict[str, str]:
    """Use the user's identity when configured; fall back to ratchetloop's own."""
    env = dict(os.environ)
    configured = git(repo, "config", "--get-regexp", r"^user\.(name|email)$", check=False)
    keys = {line.split(" ", 1)[0].lower() for line in configured.splitlines()}
    for key, var in (("user.name", "GIT_AUTHOR_NAME"), ("user.email", "GIT_AUTHOR_EMAIL")):
        if key not in keys and var not in env:
            env[var] = IDENTITY[var]
            env[var.replace("AUTHOR", "COMMITTER")] = IDENTITY[var]
    return env


def commit_paths(repo: Path, paths: Sequence[Path], message: str,
                 lock_wait: float = 10.0, context: CommitContext | None = None) -> str:
    """Commit exactly `paths`; whatever else the user has staged or changed stays as it was.
    A git lock that is not the loop's own is waited for up to `lock_wait` seconds."""
    rel = [str(Path(p).resolve().relative_to(repo)) for p in paths if Path(p).exists()]
    if not rel:
        raise RatchetError("nothing to commit")
    ctx = context or CommitContext.of(repo)
    clear_stale_locks(repo, lock_wait, ctx)

    def commit() -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # not -q: its first line names the new commit
            ["git", "-c", "core.abbrev=7", "commit", "--no-verify", "--only", "-F", "-", "--",
             *rel], cwd=repo, input=message, capture_output=True, text=True, env=ctx.env)

    with _committing(ctx.git_dir):
        proc = commit()  # tracked files need no `git add` first
        if proc.returncode != 0 and "did not match any file" in proc.stderr:
            git(repo, "add", "--", *rel)  # new files (winners/<sha>/)
            proc = commit()
    if proc.returncode != 0:
        if "nothing to commit" in proc.stdout + proc.stderr or "no changes added" in proc.stdout:
            return head(repo)
        raise RatchetError(f"git commit failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    made = re.match(r"\[[^\]]*? ([0-9a-f]{7,40})\]", proc.stdout)
    return made.group(1) if made else head(repo)  # as `rev-parse --short=7` would


def head(repo: Path, short: bool = True) -> str:
    args = ["rev-parse", "--short=7", "HEAD"] if short else ["rev-parse", "HEAD"]
    return git(repo, *args).strip()


def is_dirty(repo: Path, paths: Sequence[Path]) -> bool:
    rel = [str(Path(p).resolve().relative_to(repo)) for p in paths]
    return bool(git(repo, "status", "--porcelain", "--", *rel).strip())


def accept_commits(repo: Path, experiment: str | Collection[str], folder: Path,
                   since: str | None = None) -> list[tuple[str, dict]]:
    """(short hash, recorded row) of every accept commit of `experiment` (a name, or any of
    several), oldest first (only those after commit `since`, when given)."""
    names = {experiment} if isinstance(experiment, str) else set(experiment)
    rel = str(folder.resolve().relative_to(repo)) or "."
    span = [f"{since}..HEAD"] if since else []
    out = git(repo, "log", "--reverse", "--format=%h%x1f%B%x1e", *span, "--", rel, check=False)
    found = []
    for entry in out.split("\x1e"):
        if "\x1f" not in entry:
            continue
        sha, body = entry.strip().split("\x1f", 1)
        trailer = _trailer(body, "Ratchet-Row")
        if trailer and _trailer(body, "Ratchet-Experiment") in names:
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
