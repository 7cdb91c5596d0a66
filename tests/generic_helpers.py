"""A tiny user repository for generic-mode tests: calc.py is edited, score.py prints the metric."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CALC = "def cost():\n    base = 10\n    return base\n"
SCORE = "from calc import cost\n\nprint('running')\nprint(f'cost={cost()} units')\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def make_repo(root: Path, calc: str = CALC) -> Path:
    repo = root / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "calc.py").write_text(calc)
    (repo / "score.py").write_text(SCORE)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "start")
    return repo


def calc_reply(value: int, note: str, extra: str = "") -> str:
    return (f"File: calc.py\n```python\ndef cost():\n{extra}    return {value}\n```\n"
            f"Note: {note}\n")


def snapshot(repo: Path) -> dict[str, str]:
    """Everything about the user's checkout the loop must leave alone."""
    return {"head": git(repo, "rev-parse", "HEAD"), "branch": git(repo, "branch", "--show-current"),
            "status": git(repo, "status", "--porcelain", "--untracked-files=no"),
            "index": git(repo, "diff", "--cached"), "calc": (repo / "calc.py").read_text()}


# A metric function lives in a light module: the sandboxed child imports it by name.
def calc_value(target: str) -> float:
    """Reads the candidate's calc.py the way a user metric would; refuses to run in-process."""
    if os.environ.get("RATCHET_METRIC_CHILD") != "1":
        raise AssertionError("metric ran in the loop's process")
    namespace: dict = {}
    exec(Path(target).read_text(), namespace)
    return float(namespace["cost"]())


# ---------------------------------------------------------------- red-team projects

FD_SCORE = """import os
from calc import cost

value = cost()
fd = os.environ.get("RATCHET_RESULT_FD")
if fd:
    os.write(int(fd), f"{value}\\n".encode())
print(f"cost={value} units")
"""


def make_project(root: Path, files: dict[str, str]) -> Path:
    """A git repository with `files` committed on main."""
    repo = root / "proj"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "start")
    return repo


def reply(files: dict[str, str], note: str) -> str:
    """A scripted model reply rewriting whole files."""
    blocks = "".join(f"File: {path}\n```python\n{text}```\n" for path, text in files.items())
    return f"{blocks}Note: {note}\n"


def attempts(folder: Path) -> list[dict]:
    """runs/<n>/attempt.json of a generic project, in order."""
    import json

    return [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/attempt.json"))]
