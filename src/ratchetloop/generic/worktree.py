"""The branch and worktrees a generic run works in, so the user's checkout is never touched.

ratchet/<tag> (suffixed -2, -3... when a branch of that name exists and is not ours) starts
at the user's HEAD and gets one commit per winner. It is checked out in a worktree kept
under the repository's git dir (invisible to `git status`); candidates and other
references are materialised in detached worktrees beside it. The user's working tree,
index and current branch change only when they take a winner.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import gitops
from ..errors import RatchetError
from ..files import atomic_write_text


class Worktrees:
    def __init__(self, repo: Path, tag: str, state_dir: Path) -> None:
        self.repo, self.tag, self.state_file = repo, tag, state_dir / "branch.json"
        common = Path(gitops.git(repo, "rev-parse", "--git-common-dir").strip())
        self.root = (common if common.is_absolute() else repo / common) / "ratchet" / tag
        self.branch = ""
        self.base = ""

    # ------------------------------------------------------------------ setup

    def prepare(self) -> bool:
        """Create (or find again) the branch and its worktree; True when newly created."""
        gitops.git(self.repo, "worktree", "prune", check=False)
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        branch = state.get("branch")
        created = not (branch and self._branch_exists(branch))
        if created:
            if not gitops.git(self.repo, "rev-parse", "--verify", "-q", "HEAD",
                              check=False).strip():
                raise RatchetError(f"{self.repo} has no commit yet: commit your files first")
            branch = self._free_branch_name()
            base = gitops.git(self.repo, "rev-parse", "HEAD").strip()
            gitops.git(self.repo, "branch", branch, base)
            atomic_write_text(self.state_file, json.dumps({"branch": branch, "base": base}) + "\n")
            state = {"branch": branch, "base": base}
        self.branch, self.base = str(branch), str(state["base"])
        self._ensure(self.dir("best"), self.branch)
        return created

    def _branch_exists(self, name: str) -> bool:
        return bool(gitops.git(self.repo, "rev-parse", "--verify", "-q", f"refs/heads/{name}",
                               check=False).strip())

    def _free_branch_name(self) -> str:
        name, i = f"ratchet/{self.tag}", 2
        while self._branch_exists(name):
            name, i = f"ratchet/{self.tag}-{i}", i + 1
        return name

    def dir(self, impl: str) -> Path:
        """'best' is the branch worktree (the incumbent); others are detached scratch trees."""
        return self.root / ("branch" if impl == "best" else impl)

    def _ensure(self, path: Path, branch: str | None) -> None:
        if (path / ".git").is_file():
            return
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if branch:
            gitops.git(self.repo, "worktree", "add", "-q", str(path), branch)
        else:
            gitops.git(self.repo, "worktree", "add", "-q", "--detach", str(path), self.base)

    # ------------------------------------------------------------------ use

    def materialise(self, impl: str, files: dict[str, str]) -> Path:
        """A directory holding the repo with `files` written over it (idempotent)."""
        path = self.dir(impl)
        self._ensure(path, self.branch if impl == "best" else None)
        for rel, content in files.items():
            target = path / rel
            if not target.is_file() or target.read_text(encoding="utf-8") != content:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content, encoding="utf-8")
        return path

    def read(self, impl: str, paths: list[str]) -> dict[str, str]:
        base = self.dir(impl)
        return {p: (base / p).read_text(encoding="utf-8") if (base / p).is_file() else ""
                for p in paths}

    def commit(self, files: dict[str, str], message: str) -> str:
        """One commit on the branch with exactly these files; returns the short hash."""
        path = self.materialise("best", files).resolve()
        return gitops.commit_paths(path, [path / rel for rel in files], message)

    def base_files(self, paths: list[str]) -> dict[str, str]:
        return {p: gitops.git(self.repo, "show", f"{self.base}:{p}", check=False) for p in paths}
