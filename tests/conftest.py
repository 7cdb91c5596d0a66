"""Shared fixtures: real experiments copied into fresh git repos with small budgets.

`exp_repo("fib")` copies experiments/fib (without any state) into `<tmp>/repo/experiments/fib`,
makes `<tmp>/repo` a git repository with one commit, shrinks the acceptance budget so an
iteration takes a second or two, and returns the experiment folder. Pass `tweaks` to change
more of experiment.json (a dict merged into it; nested dicts merge), or `cases` to keep only
some benchmark cases.

Every test gets a private host-wide benchmark lock (RATCHET_BENCH_LOCK), so the suite never
waits behind other people's benchmarks on a shared machine, and test runs never skew theirs
more than the CPU load already does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO_ROOT / "experiments"
PYTHON = sys.executable
RATCHET = str(Path(sys.executable).with_name("ratchet"))

STATE = ("SCORES.json", "SCORES.md", "MEMORY.json", "MEMORY.md", "STRATEGY.json",
         "STRATEGY.md", "runs", "winners",
         "__pycache__", ".ratchet.lock", ".ratchet.lock.holder")

# One look of 6 paired rounds at 90% confidence: a 2x (or 1000x) change is proven at once,
# a no-change is rejected at once. Enough for loop logic; not for real measurement.
SMALL_ACCEPTANCE: dict[str, Any] = {"min_effect": 0.02, "confidence": 0.9, "min_rounds": 6,
                                    "max_rounds": 6, "batch_rounds": 6, "max_seconds": 5}

GIT_ENV = {"GIT_AUTHOR_NAME": "Test User", "GIT_AUTHOR_EMAIL": "user@example.com",
           "GIT_COMMITTER_NAME": "Test User", "GIT_COMMITTER_EMAIL": "user@example.com"}


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run git in `repo` as the test user; returns stdout."""
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV})
    if check and proc.returncode:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def make_exp_repo(root: Path, name: str = "fib", tweaks: dict[str, Any] | None = None,
                  cases: list[str] | None = None) -> Path:
    """Copy experiments/<name> into a new git repo under `root`; returns the experiment dir."""
    repo = root / "repo"
    folder = repo / "experiments" / name
    shutil.copytree(EXPERIMENTS / name, folder, ignore=shutil.ignore_patterns(*STATE))
    contract = folder / "experiment.json"
    data = json.loads(contract.read_text(encoding="utf-8"))
    data["acceptance"] = dict(SMALL_ACCEPTANCE)
    data["timeout_seconds"] = 60
    if cases is not None:
        data["cases"] = [c for c in data["cases"] if c["name"] in cases]
    _merge(data, tweaks or {})
    contract.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (repo / "README.md").write_text("user project\n", encoding="utf-8")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return folder


def _clone_state() -> tuple[str, str]:
    """This checkout's HEAD, branches and experiments/ status (run state included)."""
    if not (REPO_ROOT / ".git").exists():
        return "", ""
    refs = git(REPO_ROOT, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads")
    return refs, git(REPO_ROOT, "status", "--porcelain", "--ignored", "--", "experiments")


@pytest.fixture(scope="session", autouse=True)
def _the_clone_is_never_run_in() -> Iterator[None]:
    """A test that resolves an experiment by name from the wrong place runs -- and commits --
    in this checkout (it happened once: `--root` lost to the current directory). Fail the
    session if any branch moved or run state appeared under experiments/."""
    before = _clone_state()
    yield
    after = _clone_state()
    assert after == before, f"the test suite changed this checkout:\n{before}\n->\n{after}"


@pytest.fixture(autouse=True)
def _private_bench_lock(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path_factory.getbasetemp() / "bench.lock"
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(lock))


@pytest.fixture
def exp_repo(tmp_path: Path) -> Callable[..., Path]:
    """Factory: exp_repo("fib", tweaks={...}, cases=[...]) -> experiment folder in a new repo."""
    made: list[int] = []

    def make(name: str = "fib", tweaks: dict[str, Any] | None = None,
             cases: list[str] | None = None) -> Path:
        made.append(1)
        return make_exp_repo(tmp_path / f"r{len(made)}", name, tweaks, cases)

    return make


@pytest.fixture
def fib(exp_repo: Callable[..., Path]) -> Path:
    """A fib experiment in a fresh repo, small budgets."""
    return exp_repo("fib")


def reply(source: str, note: str = "a change", lang: str = "python", extra: str = "") -> str:
    """A well-formed model reply: one fenced block, then the note line."""
    return f"Here you go.\n\n```{lang}\n{source.strip()}\n```\nNote: {note}\n{extra}"


def write_replay(path: Path, replies: list[str]) -> str:
    """Write a replay script; returns the `--model` value that plays it."""
    path.write_text(json.dumps(replies), encoding="utf-8")
    return f"replay:{path}"


def slow_fib(k: int) -> str:
    """A correct fib that burns ~k loop steps per call: halving k is a clear 2x winner."""
    return (f"def fib(n):\n    for _ in range({k}):\n        pass\n    a, b = 0, 1\n"
            "    for _ in range(n):\n        a, b = b, a + b\n    return a\n")


ITERATIVE = """def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
"""

NAIVE = """def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)
"""


def run_ratchet(*args: str, cwd: Path, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`ratchet ...` as a real subprocess."""
    return subprocess.run([RATCHET, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture
def state_reader() -> Iterator[Callable[[Path], dict[str, Any]]]:
    def read(folder: Path) -> dict[str, Any]:
        return json.loads((folder / "SCORES.json").read_text(encoding="utf-8"))

    yield read
