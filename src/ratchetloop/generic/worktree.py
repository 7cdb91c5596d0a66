"""Where a generic run's candidates run, and how winners reach the ratchet/<tag> branch.

The user's checkout is never touched: ratchet/<tag> (suffixed -2, -3... when a branch of
that name exists and is not ours) starts at the user's HEAD and gets one commit per winner.

The clean-run path (what a candidate can and cannot leave behind)
-----------------------------------------------------------------
Everything lives under `<git-common-dir>/ratchet/<tag>/` (invisible to `git status` and
to tools that walk the working tree):

* `pristine/` -- a checkout of the branch's starting commit (`base`), exported once per
  session with a private index file (`read-tree` + `checkout-index`): exactly the user's
  tracked files, nothing untracked. Nothing ever runs in it.
* `runs/<impl>/` -- for EVERY run of the user's command (candidate, incumbent, check, setup
  check), a copy of `pristine/` with that implementation's editable files written over
  it, i.e. exactly the tree being judged (base + bundle == the branch tip's tree + the
  candidate's edits; prepare() refuses a branch whose tip differs from base outside the
  editable files). Nothing a run wrote -- a planted `.git`, a tampered benchmark, a stray
  cache -- reaches the next run: when the run ends the directory is deleted, or, only
  where the sandbox gives every run a private view of it (`sandbox.private_work_view()`:
  the run cannot write the real directory at all) AND a stat manifest taken before the
  run (every entry's name, type, mode, size, inode, link count, mtime and ctime, link
  targets) still matches after it (when all its processes are gone), renamed aside to
  `keep/<impl>/`, and, if it still matches then, renamed back for that implementation's
  next run with only the editable files that differ rewritten (anything touched: a fresh
  copy; parked dirs stay on disk between sessions and are dropped by prepare()).
  Copying and deleting the tree per run cost more than the run itself for small
  commands. The sandbox copies nothing back by default (`artefacts=()`), and the declared
  read-only files are read-only inside it (`readonly_inside`); their hashes are checked
  again after the run for the case where the sandbox could not enforce that.
* These run directories are NOT git worktrees: they have no `.git`, git never runs in
  them and never reads anything from them. The old layout (worktrees `branch/`,
  `candidate/`...) is deleted with plain file operations and `git worktree prune`d.

Git hardening
-------------
Every git command here goes through `gitops.plumb`: explicit `--git-dir=<common dir>` and
`--work-tree=` (an empty directory of ours, or the fresh `pristine` target), run from the
git dir, environment variables that redirect git (GIT_DIR, GIT_INDEX_FILE...) or run
programs (GIT_EXTERNAL_DIFF, GIT_SSH...) removed, and `-c core.hooksPath=/dev/null -c
core.fsmonitor=false -c gc.auto=0 -c maintenance.auto=false ...`. Winners are committed
without a work tree: `hash-object --no-filters` (no clean filter runs on candidate text),
a private index, `write-tree`, `commit-tree` (runs no hooks) and a compare-and-swap
`update-ref`. Filter/diff/textconv drivers cannot be switched off globally from the
command line, so: attributes are only ever read from the user's own committed tree, their
info/attributes and their global attributes file (never from a candidate directory), and
editable paths may not be `.gitattributes`/`.gitmodules` or inside `.git` (contract.py);
the pristine export applies the user's smudge filters to the user's own commit, as their
checkout does; `ratchet best` diffs with `--no-ext-diff --no-textconv`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from .. import gitops, sandbox
from ..errors import RatchetError
from ..files import atomic_write_text

LEGACY = ("branch", "candidate", "best", "seed")  # worktree names of the old layout
Manifest = dict[str, tuple[object, ...]]


@dataclass
class _Prepared:
    """A run directory as we left it: its manifest and the editable files we wrote."""

    manifest: Manifest
    files: dict[str, str]


class Worktrees:
    """The branch, the pristine export and the per-run directories (see the module doc)."""

    def __init__(self, repo: Path, tag: str, state_dir: Path) -> None:
        self.repo, self.tag, self.state_file = repo, tag, state_dir / "branch.json"
        self.git_dir = gitops.common_dir(repo)
        self.root = self.git_dir / "ratchet" / tag
        self.void = self.root / "void"  # the empty work tree plumbing commands get
        self.pristine = self.root / "pristine"
        self.branch = ""
        self.base = ""
        self.readonly: dict[str, str] = {}  # read-only path -> sha256 in pristine
        self.keep = self.root / "keep"  # run dirs proven untouched, for their next run
        self._ready: dict[str, _Prepared] = {}  # impl -> its dir in runs/, as prepared
        self._kept: dict[str, _Prepared] = {}  # impl -> its dir in keep/, as left

    def _git(self, *args: str, check: bool = True) -> str:
        return gitops.plumb(self.git_dir, *args, work_tree=self.void, check=check)

    # ------------------------------------------------------------------ setup

    def prepare(self, editable: list[str], readonly: list[str]) -> bool:
        """Branch (created or found again), pristine export; True when newly created."""
        self._reset_dir(self.void)
        self._remove_legacy_worktrees()
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        branch = state.get("branch")
        created = not (branch and self._branch_exists(branch))
        if created:
            head = gitops.git(self.repo, "rev-parse", "--verify", "-q", "HEAD^{commit}",
                              check=False).strip()
            if not head:
                raise RatchetError(f"{self.repo} has no commit yet: commit your files first")
            branch = self._free_branch_name()
            self._git("update-ref", f"refs/heads/{branch}", head, "")
            atomic_write_text(self.state_file, json.dumps({"branch": branch, "base": head}) + "\n")
            state = {"branch": branch, "base": head}
        self.branch, self.base = str(branch), str(state["base"])
        self._check_branch(editable)
        self._export(readonly)
        return created

    def _remove_legacy_worktrees(self) -> None:
        """Worktrees of the old layout: deleted as plain files (git is never asked to look
        inside a directory a candidate ran in), then their registrations pruned."""
        removed = False
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.is_dir() and not child.is_symlink() and (
                        child.name in LEGACY or os.path.lexists(child / ".git")):
                    shutil.rmtree(child)
                    removed = True
        if removed:
            self._git("worktree", "prune", check=False)

    def _branch_exists(self, name: str) -> bool:
        return bool(self._git("rev-parse", "--verify", "-q", f"refs/heads/{name}^{{commit}}",
                              check=False).strip())

    def _free_branch_name(self) -> str:
        name, i = f"ratchet/{self.tag}", 2
        while self._branch_exists(name):
            name, i = f"ratchet/{self.tag}-{i}", i + 1
        return name

    def _check_branch(self, editable: list[str]) -> None:
        changed = self._git("diff-tree", "-r", "--no-renames", "--no-ext-diff", "--no-textconv",
                            "--name-only", "-z", self.base, self.tip()).split("\0")
        outside = sorted(p for p in changed if p and p not in editable)
        if outside:
            raise RatchetError(
                f"{self.branch} changes files outside the editable list since it started"
                f" ({', '.join(outside[:5])}): delete {self.state_file} to start a new branch")

    def _export(self, readonly: list[str]) -> None:
        self._drop_kept()
        fresh = self.root / "pristine.new"
        self._reset_dir(fresh)
        gitops.export_tree(self.git_dir, self.base, fresh, self.root / "pristine.index")
        if self.pristine.exists():
            shutil.rmtree(self.pristine)
        fresh.rename(self.pristine)
        self.readonly = {p: _digest(self.pristine / p) for p in readonly}

    @staticmethod
    def _reset_dir(path: Path) -> None:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)

    # ------------------------------------------------------------------ runs

    def fresh(self, impl: str, files: dict[str, str]) -> Path:
        """A directory holding exactly base + `files` (see the module doc)."""
        path = self.root / "runs" / impl
        self._ready.pop(impl, None)
        _remove(path)
        if self._reuse(impl, path, files):
            return path
        for attempt in (1, 2):
            _remove(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.pristine, path, symlinks=True)
            if not self.changed_readonly(path):
                break
            if attempt == 2:
                raise RatchetError(f"{self.pristine} keeps changing under the loop")
            self._export(list(self.readonly))  # someone wrote the pristine copy: export again
        _write_files(path, files)
        if sandbox.private_work_view():
            self._ready[impl] = _Prepared(_manifest(path), dict(files))
        return path

    def _reuse(self, impl: str, path: Path, files: dict[str, str]) -> bool:
        """Bring back keep/<impl> with `files` written, if it is still exactly as parked
        (checked right after its run, and again now: anything touched -> a fresh copy)."""
        kept = self._kept.pop(impl, None)
        parked = self.keep / impl
        if kept is None or kept.files.keys() != files.keys() \
                or not sandbox.private_work_view() or _manifest(parked) != kept.manifest:
            _remove(parked)
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        os.rename(parked, path)
        changed = {rel: text for rel, text in files.items() if kept.files[rel] != text}
        _write_files(path, changed)  # files we wrote before: no entry appears or goes
        self._ready[impl] = _Prepared(_restat(path, kept.manifest, list(changed)), dict(files))
        return True

    def discard(self, path: Path) -> None:
        """Done with a run directory: deleted (rmtree never follows the links a run may have
        made), or parked for its implementation's next run when the run provably left it
        as prepared (see the module doc)."""
        impl = path.name
        ready = self._ready.pop(impl, None) if path.parent == self.root / "runs" else None
        if ready is not None and sandbox.private_work_view() \
                and _manifest(path) == ready.manifest:
            _remove(self.keep / impl)
            self.keep.mkdir(parents=True, exist_ok=True)
            os.rename(path, self.keep / impl)
            self._kept[impl] = _Prepared(_restat(self.keep / impl, ready.manifest, []),
                                         ready.files)
            return
        _remove(path)

    def _drop_kept(self) -> None:
        """Forget and delete every parked run directory (a new pristine export)."""
        self._kept.clear()
        _remove(self.keep)

    def changed_readonly(self, path: Path) -> list[str]:
        """Read-only files whose content differs from the pristine export."""
        return [rel for rel, digest in self.readonly.items() if _digest(path / rel) != digest]

    # ------------------------------------------------------------------ git

    def tip(self) -> str:
        return self._git("rev-parse", "--verify", f"refs/heads/{self.branch}^{{commit}}").strip()

    def tip_files(self, paths: list[str]) -> dict[str, str]:
        """The incumbent's editable files: the branch tip as stored."""
        return gitops.read_blobs(self.git_dir, self.void, self.tip(), paths)

    def base_files(self, paths: list[str]) -> dict[str, str]:
        return gitops.read_blobs(self.git_dir, self.void, self.base, paths)

    def commit(self, files: dict[str, str], message: str) -> str:
        """One commit on the branch with exactly these files; returns the short hash."""
        return gitops.commit_files(self.repo, self.git_dir, self.void, self.branch, files,
                                   message, self.root / "commit.index")


def _remove(path: Path) -> None:
    """Delete a file or directory tree (rmtree never follows links a run may have made)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _write_files(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        target = _inside(root, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()  # never write through a link out of the run directory
        target.write_text(content, encoding="utf-8")


def _entry(st: os.stat_result, link: str | None) -> tuple[object, ...]:
    return (st.st_mode, st.st_ino, st.st_nlink, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            link)


def _root_entry(root: Path) -> tuple[object, ...] | None:
    """The manifest's entry for the root itself (its ctime left out: parking renames it)."""
    try:
        top = os.lstat(root)
    except OSError:
        return None
    return (top.st_mode, top.st_ino, top.st_mtime_ns)


def _restat(root: Path, manifest: Manifest, rels: list[str]) -> Manifest:
    """`manifest` with the root (renamed) and the regular files `rels` (rewritten in
    place by us) stat'ed again: what we changed ourselves, without walking the tree."""
    out = dict(manifest)
    out[""] = _root_entry(root) or ()  # gone: matches no manifest, so no reuse
    for rel in rels:
        out[rel] = _entry(os.lstat(root / rel), None)
    return out


def _manifest(root: Path) -> Manifest:
    """Every entry under root: type and mode, inode, links, size, mtime and ctime (any
    write, chmod, rename, link or xattr change moves ctime), and symlink targets. The
    root's own ctime is left out: parking it (a rename) changes that."""
    top = _root_entry(root)
    if top is None:
        return {}
    out: Manifest = {"": top}
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(root / rel) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                link = os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else None
                out[name] = _entry(st, link)
                if stat.S_ISDIR(st.st_mode):
                    todo.append(name)
    return out


def _inside(root: Path, rel: str) -> Path:
    """root/rel, refusing any path that leaves root or passes through a symlinked dir."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts or ".git" in parts:
        raise RatchetError(f"refusing to write {rel!r}: not a plain path inside the project")
    current = root
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise RatchetError(f"refusing to write {rel!r}: {part} is a symlink")
    return root / rel


def _digest(path: Path) -> str:
    """Content hash of a regular file; never opens anything else (a fifo would block)."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return "link:" + os.readlink(path)
        if not stat.S_ISREG(mode):
            return f"not a regular file ({stat.filemode(mode)})"
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return "missing"
