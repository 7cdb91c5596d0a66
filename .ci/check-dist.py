"""What the sdist and the wheel must carry: `python .ci/check-dist.py SDIST WHEEL [REPO]`.

The wheel: the package, the C harness sources, every shipped experiment (each folder of the
repository's experiments/ with an experiment.json, file for file as git tracks it), the
licence, `python -m ratchetloop`, and no run state (SCORES, MEMORY, runs/, winners/...).
The sdist: the same experiments, the tests, the licence and the changelog, and no run
state either. Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

STATE = re.compile(r"(^|/)(SCORES\.|MEMORY\.|report\.(html|png)$|results\.tsv$|\.ratchet\.lock"
                   r"|\.ratchet\.status\.json$|branch\.json$|trials\.json$"
                   r"|runs/|winners/|__pycache__/|.*\.pyc$|.*\.o$|candidate\.bin$)")


def shipped_files(repo: Path) -> dict[str, list[str]]:
    """experiment -> its files (relative), as git tracks them, run state left out."""
    names = sorted(p.parent.name for p in (repo / "experiments").glob("*/experiment.json"))
    out = subprocess.run(["git", "ls-files", "--", *(f"experiments/{n}" for n in names)],
                         cwd=repo, capture_output=True, text=True)
    tracked = out.stdout.splitlines() if out.returncode == 0 else []
    files: dict[str, list[str]] = {n: [] for n in names}
    for path in tracked:
        _, name, rel = path.split("/", 2)
        if not STATE.search(rel):
            files[name].append(rel)
    for name, rels in files.items():  # not a git checkout (an unpacked sdist): the folder
        if not rels:
            base = repo / "experiments" / name
            rels.extend(str(p.relative_to(base)) for p in sorted(base.rglob("*"))
                        if p.is_file() and not STATE.search(str(p.relative_to(base))))
    return files


def check(sdist: Path, wheel: Path, repo: Path) -> list[str]:
    problems: list[str] = []
    experiments = shipped_files(repo)
    if not experiments:
        problems.append(f"no experiments found in {repo / 'experiments'}")

    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
    required = ["ratchetloop/__init__.py", "ratchetloop/__main__.py", "ratchetloop/cli.py",
                "ratchetloop/shipped.py"]
    required += [f"ratchetloop/harness/c/{p.name}"
                 for p in sorted((repo / "src/ratchetloop/harness/c").glob("*.[ch]"))]
    required += [f"ratchetloop/_experiments/{name}/{rel}"
                 for name, rels in experiments.items() for rel in rels]
    problems += [f"wheel lacks {p}" for p in required if p not in in_wheel]
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in in_wheel):
        problems.append("wheel lacks its LICENSE")
    problems += [f"wheel carries run state: {n}" for n in sorted(in_wheel) if STATE.search(n)]

    with tarfile.open(sdist) as tf:
        in_sdist = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    required = ["LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "tests/conftest.py",
                "src/ratchetloop/__init__.py"]
    required += [f"tests/{p.name}" for p in sorted((repo / "tests").glob("test_*.py"))]
    required += [f"experiments/{name}/{rel}" for name, rels in experiments.items()
                 for rel in rels]
    problems += [f"sdist lacks {p}" for p in required if p not in in_sdist]
    problems += [f"sdist carries run state: {n}" for n in sorted(in_sdist)
                 if n.startswith("experiments/") and STATE.search(n)]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    repo = Path(argv[2]) if len(argv) == 3 else Path(__file__).resolve().parents[1]
    problems = check(Path(argv[0]), Path(argv[1]), repo)
    for line in problems:
        print(f"check-dist: {line}")
    if not problems:
        print(f"check-dist: ok ({Path(argv[0]).name}, {Path(argv[1]).name})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
