"""What the explorer shows a model of a repository: bounded, and never a secret.

The loop only ever runs on tracked files, so the view is `git ls-files`: a listing capped at
LISTING_MAX paths (shallow ones first), then key files -- README, manifests, build files,
benchmark/eval scripts, then the sources they name -- each cut at FILE_MAX characters and
all of them at TOTAL_MAX. Never shown, not even by name: paths that look like secrets
(`.env`, `*key*`, `*.pem`, `id_rsa`, `.ssh/`...), symlinks (a tracked link can point at
~/.aws/credentials) and binary files. In what is shown, lines that look like credentials
(`sk-...`, `AKIA...`, private-key blocks, `password = "..."`) and the values of this
process's own secret-named variables are withheld.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import gitops
from ..sandbox.env import looks_secret

LISTING_MAX = 300
FILE_MAX = 6_000
TOTAL_MAX = 40_000
SECRET_NAMES = (".env", ".env.*", "*.env", "*key*", "*.pem", "*.p12", "*.pfx", "*.der",
                "*.keystore", "*.jks", "*.kdbx", "*.gpg", "*.asc", "id_rsa*", "id_dsa*",
                "id_ecdsa*", "id_ed25519*", "*secret*", "*token*", "*passw*", "*credential*",
                ".netrc", ".npmrc", ".pypirc", ".htpasswd", ".git-credentials", "*.tfstate*")
SECRET_DIRS = (".ssh", ".aws", ".gnupg", ".docker", ".kube", "secrets")
MANIFESTS = ("pyproject.toml", "setup.py", "setup.cfg", "requirements*.txt", "package.json",
             "Cargo.toml", "go.mod", "Makefile", "makefile", "GNUmakefile", "CMakeLists.txt",
             "justfile", "tox.ini", "noxfile.py", "environment.yml", "Pipfile", "build.gradle",
             "pom.xml", "meson.build", "*.cabal", "Gemfile")
BENCH_WORDS = ("bench", "perf", "eval", "score", "metric", "train", "profile", "speed", "timing")
SOURCE = (".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".js", ".ts", ".java",
          ".jl", ".rb", ".sh", ".sql", ".md", ".toml", ".yaml", ".yml", ".json", ".cfg", ".txt")
CREDENTIAL_LINE = re.compile(
    r"sk-[A-Za-z0-9_-]{12,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[\w-]{10,}"
    r"|glpat-[\w-]{16,}|AIza[\w-]{30,}|-----BEGIN [A-Z ]*PRIVATE KEY"
    r"|(?i:(?:api[_-]?key|secret|token|passw(?:or)?d|credential)s?[\"']?\s*[:=]\s*[\"']?"
    r"[^\s\"',;]{8,})")
WITHHELD = "[line withheld: it looks like a credential]"


def is_secret_path(path: str) -> bool:
    """A tracked path the explorer never reads, lists or lets a contract name."""
    parts = PurePosixPath(path).parts
    name = parts[-1].lower() if parts else ""
    if any(p.lower() in SECRET_DIRS for p in parts[:-1]):
        return True
    return any(fnmatch.fnmatchcase(name, pat) for pat in SECRET_NAMES)


@dataclass
class RepoView:
    """The bounded view: the listing, the files shown (path -> text) and what was left out."""

    listing: list[str]
    total_files: int
    files: dict[str, str] = field(default_factory=dict)
    cut: list[str] = field(default_factory=list)  # shown, but only their first FILE_MAX chars
    withheld: int = 0  # secret-looking paths, symlinks and binaries left out entirely

    def listing_text(self) -> str:
        more = self.total_files - len(self.listing)
        tail = [f"... and {more} more tracked files"] if more > 0 else []
        return "\n".join(self.listing + tail)

    def files_text(self) -> str:
        blocks = []
        for path, text in self.files.items():
            note = " (cut short)" if path in self.cut else ""
            blocks.append(f"=== {path}{note} ===\n{text.rstrip()}\n=== end of {path} ===")
        return "\n\n".join(blocks)

    def summary(self) -> dict[str, object]:
        return {"listed": len(self.listing), "tracked": self.total_files,
                "files_shown": list(self.files), "cut": self.cut, "withheld": self.withheld}


def gather(repo: Path) -> RepoView:
    """The view of `repo`'s tracked files (see the module doc for the bounds)."""
    tracked = [p for p in gitops.git(repo, "ls-files", "-z").split("\0") if p]
    usable = [p for p in tracked if not is_secret_path(p) and _plain_file(repo, p)]
    ordered = sorted(usable, key=lambda p: (p.count("/"), p))
    view = RepoView(listing=ordered[:LISTING_MAX], total_files=len(usable),
                    withheld=len(tracked) - len(usable))
    budget = TOTAL_MAX
    for path in _key_files(repo, ordered, view):
        text, cut = _read(repo / path)
        if text is None:
            view.withheld += 1
            continue
        if cut or len(text) > budget:
            view.cut.append(path)
        text = text[:budget]
        view.files[path] = text
        budget -= len(text)
        if budget <= 0:
            break
    return view


def _plain_file(repo: Path, rel: str) -> bool:
    """A regular file inside the repository: no symlink anywhere on its way."""
    path = repo / rel
    for part in [path, *path.parents]:
        if part == repo:
            return path.is_file()
        if part.is_symlink():
            return False
    return False


def _key_files(repo: Path, ordered: list[str], view: RepoView) -> list[str]:
    """README, manifests, benchmark scripts, then sources those name, then shallow sources."""
    def named(path: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(PurePosixPath(path).name, p) for p in patterns)

    readme = [p for p in ordered if PurePosixPath(p).name.lower().startswith("readme")][:2]
    manifests = [p for p in ordered if named(p, MANIFESTS)][:8]
    bench = [p for p in ordered if PurePosixPath(p).suffix in SOURCE
             and any(w in p.lower() for w in BENCH_WORDS)][:8]
    first = list(dict.fromkeys(readme + manifests + bench))
    said = " ".join((_read(repo / p)[0] or "") for p in first)
    mentioned = [p for p in ordered if p not in first and PurePosixPath(p).suffix in SOURCE
                 and re.search(rf"\b{re.escape(PurePosixPath(p).stem)}\b", said)]
    rest = [p for p in ordered if PurePosixPath(p).suffix in SOURCE]
    return list(dict.fromkeys(first + mentioned + rest))


def _read(path: Path) -> tuple[str | None, bool]:
    """(text with credential-looking lines withheld, whether it was cut); None: binary."""
    try:
        with open(path, "rb") as f:
            raw = f.read(FILE_MAX * 4 + 1)
    except OSError:
        return None, False
    if b"\0" in raw[:8192]:
        return None, False
    text = raw.decode("utf-8", errors="replace")
    cut = len(text) > FILE_MAX or len(raw) > FILE_MAX * 4
    return scrub(text[:FILE_MAX]), cut


def scrub(text: str) -> str:
    """Withhold credential-looking lines and our own secret-named variables' values."""
    ours = [v for k, v in os.environ.items() if looks_secret(k) and len(v) >= 8]
    lines = []
    for line in text.splitlines(keepends=True):
        if CREDENTIAL_LINE.search(line) or any(v in line for v in ours):
            line = WITHHELD + ("\n" if line.endswith("\n") else "")
        lines.append(line)
    return "".join(lines)
