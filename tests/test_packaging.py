"""ratchetloop as a package: what the wheel and sdist carry, the wheel in a fresh venv,
`ratchet new`, explicit experiment discovery, `python -m ratchetloop`, seed.py anywhere.

The wheel is built once for the module, with --no-isolation (hatchling from the test venv,
no network), from a copy of the source with run state planted in it. The fresh venv gets
the wheel itself and reaches the dependencies through a .pth line to the test venv's
site-packages, so nothing is downloaded; `.ci/wheel-check` repeats the journey with the
dependencies from PyPI and longer runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import GIT_ENV, PYTHON, RATCHET, REPO_ROOT, git, make_exp_repo, run_ratchet

import ratchetloop
from ratchetloop import shipped
from ratchetloop.cli import main
from ratchetloop.errors import RatchetError
from ratchetloop.experiment import find_experiment_dir

CHECK_DIST = REPO_ROOT / ".ci" / "check-dist.py"
SHIPPED = sorted(p.parent.name for p in (REPO_ROOT / "experiments").glob("*/experiment.json"))
PLANTED = {"SCORES.json": "{}", "MEMORY.md": "# memory", "report.html": "<html>",
           "runs/0001/attempt.json": "{}", "winners/abc1234/candidate.c": "int x;",
           "__pycache__/eval.cpython-311.pyc": "", ".ratchet.lock": ""}


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 and exactly one `error: ...` line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    return path


# ------------------------------------------------------------------ building the dists


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) built from a copy of the source with run state planted in linear."""
    base = tmp_path_factory.mktemp("dists")
    src = base / "src"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (REPO_ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, src / rel)
    for rel, text in PLANTED.items():  # what a run leaves behind must never ship
        path = src / "experiments" / "linear" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = subprocess.run([PYTHON, "-m", "build", "--no-isolation", "--outdir",
                           str(base / "dist"), str(src)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (sdist,), (wheel,) = (base / "dist").glob("*.tar.gz"), (base / "dist").glob("*.whl")
    return sdist, wheel


def test_wheel_and_sdist_carry_experiments_tests_and_no_run_state(dists) -> None:
    sdist, wheel = dists
    proc = subprocess.run([PYTHON, str(CHECK_DIST), str(sdist), str(wheel), str(REPO_ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED:
        assert f"ratchetloop/_experiments/{name}/experiment.json" in names
    assert "ratchetloop/harness/c/rl_harness.c" in names
    assert not [n for n in names if "SCORES" in n or "/runs/" in n or "winners/" in n
                or "report.html" in n or ".pyc" in n or "ratchet.lock" in n]


def test_check_dist_fails_on_run_state_and_a_missing_file(dists, tmp_path: Path) -> None:
    """The checker CI relies on can fail: a doctored wheel is refused, naming both faults."""
    sdist, wheel = dists
    bad = tmp_path / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            if item.filename != "ratchetloop/_experiments/fib/eval.py":
                dst.writestr(item, src.read(item))
        dst.writestr("ratchetloop/_experiments/linear/SCORES.json", "{}")
    proc = subprocess.run([PYTHON, str(CHECK_DIST), str(sdist), str(bad), str(REPO_ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "wheel lacks ratchetloop/_experiments/fib/eval.py" in proc.stdout
    assert "wheel carries run state: ratchetloop/_experiments/linear/SCORES.json" in proc.stdout


def test_metadata_version_from_one_place_licence_and_extras(dists) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        meta = next(zf.read(n).decode() for n in zf.namelist() if n.endswith("/METADATA"))
    assert re.search(r"^Version: (.+)$", meta, re.M).group(1) == ratchetloop.__version__
    assert "License-Expression: MIT" in meta
    for extra in ("ray", "bench", "test"):
        assert f"Provides-Extra: {extra}" in meta
    assert "Project-URL: Repository," in meta and "Classifier: " in meta
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=", pyproject, re.M)  # no second copy of the version
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License")


# ------------------------------------------------------------ the wheel in a fresh venv


@pytest.fixture(scope="module")
def wheel_venv(dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv outside the repository holding only the wheel (deps via a .pth line)."""
    venv = tmp_path_factory.mktemp("wheelvenv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([PYTHON, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--quiet", "--no-deps", "--no-index", str(dists[1])], check=True,
                   capture_output=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_from_the_wheel_in_a_new_repository_new_and_run_work(wheel_venv: Path,
                                                             tmp_path: Path) -> None:
    """The issue's "done when", at test size: a repository with no commit yet, `ratchet new`
    then a tuner run; the code comes from the wheel and the clone is never touched."""
    ratchet, python = str(wheel_venv / "bin" / "ratchet"), str(wheel_venv / "bin" / "python")
    env = {**os.environ, **GIT_ENV}
    env.pop("RATCHET_ROOT", None)
    user = new_repo(tmp_path / "user")
    where = subprocess.run([python, "-c", "import ratchetloop; print(ratchetloop.__file__)"],
                           cwd=user, capture_output=True, text=True, env=env).stdout
    assert where.startswith(str(wheel_venv)), where
    for argv in ([ratchet, "--version"], [python, "-m", "ratchetloop", "--version"]):
        out = subprocess.run(argv, cwd=user, capture_output=True, text=True, env=env)
        assert out.stdout.strip() == f"ratchet, version {ratchetloop.__version__}", out
    listing = subprocess.run([ratchet, "new", "--list"], cwd=user, capture_output=True,
                             text=True, env=env).stdout
    assert [ln.split()[0] for ln in listing.splitlines()] == SHIPPED
    proc = subprocess.run([ratchet, "new", "fib"], cwd=user, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0 and "ratchet run fib" in proc.stdout, proc.stderr
    proc = subprocess.run([ratchet, "run", "fib", "--loop", "1"], cwd=user, capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scores = json.loads((user / "experiments" / "fib" / "SCORES.json").read_text())
    assert scores["last_iteration"] >= 1 and scores["seed"] is not None
    subjects = git(user, "log", "--format=%s").splitlines()
    assert subjects[-1].startswith("Add experiment fib (ratchet new fib")
    assert git(user, "status", "--porcelain", "--", "experiments/fib/runs") == ""  # ignored


# --------------------------------------------------------------------------- ratchet new


@pytest.fixture
def templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Shipped experiments as a used clone has them: a winner as the candidate, run state."""
    root = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "experiments" / "fib", root / "fib",
                    ignore=shutil.ignore_patterns("SCORES.*", "MEMORY.*", "runs", "winners",
                                                  "__pycache__"))
    (root / "fib" / "candidate.py").write_text("def fib(n):\n    return 0  # a winner\n")
    for rel, text in PLANTED.items():
        (root / "fib" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "fib" / rel).write_text(text)
    monkeypatch.setattr(shipped, "shipped_root", lambda: root)
    return root


def test_new_copies_resets_the_candidate_leaves_state_and_commits(templates: Path,
                                                                  tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")
    (repo / "staged.txt").write_text("mine\n")
    git(repo, "add", "staged.txt")
    folder = shipped.new("fib", cwd=repo)
    assert folder == repo / "experiments" / "fib"
    assert (folder / "candidate.py").read_text() == (folder / "naive.py").read_text()
    for rel in PLANTED:
        assert not (folder / rel).exists(), rel
    assert git(repo, "log", "--format=%s").startswith("Add experiment fib (ratchet new fib")
    committed = git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert "staged.txt" not in committed and "experiments/fib/experiment.json" in committed
    assert git(repo, "status", "--porcelain") == "A  staged.txt\n"  # the user's index kept
    assert "runs/" in (folder / ".gitignore").read_text()


def test_new_refuses_to_overwrite_and_needs_git(templates: Path, tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")
    (repo / "experiments" / "fib").mkdir(parents=True)
    (repo / "experiments" / "fib" / "mine.txt").write_text("keep me")
    with pytest.raises(RatchetError, match="already exists: not overwriting"):
        shipped.new("fib", cwd=repo)
    assert os.listdir(repo / "experiments" / "fib") == ["mine.txt"]
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RatchetError, match="not inside a git repository.*git init"):
        shipped.new("fib", cwd=plain)
    assert not (plain / "experiments").exists()
    with pytest.raises(RatchetError, match="no shipped experiment 'nope'.*fib"):
        shipped.new("nope", cwd=repo)


def test_new_into_a_directory_of_choice_and_its_run_hint(templates: Path, tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "proj")
    folder = shipped.new("fib", Path("lab/fast"), cwd=repo)
    assert folder == repo / "lab" / "fast" and (folder / "experiment.json").is_file()
    assert shipped.run_hint(folder, cwd=repo) == "ratchet run lab/fast"
    assert shipped.run_hint(shipped.new("fib", cwd=repo), cwd=repo) == "ratchet run fib"


def test_cli_new_list_names_each_shipped_experiment_with_its_description() -> None:
    out = CliRunner().invoke(main, ["new", "--list"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert [ln.split()[0] for ln in lines] == SHIPPED
    for name, line in zip(SHIPPED, lines, strict=True):
        description = json.loads((REPO_ROOT / "experiments" / name / "experiment.json")
                                 .read_text())["description"]
        assert line.split(None, 1)[1] == " ".join(description.split())


# ------------------------------------------------------------------------------ discovery


def test_discovery_never_falls_back_to_the_package_folder(tmp_path: Path) -> None:
    """Old code returned the clone's experiments/linear from any directory."""
    with pytest.raises(RatchetError) as err:
        find_experiment_dir("linear", start=tmp_path, root="")
    text = str(err.value)
    assert str(tmp_path) in text and "ratchet new linear" in text and "--root" in text


def test_discovery_stops_at_the_repository_top(tmp_path: Path) -> None:
    """An experiments/ folder above the enclosing git repository is someone else's."""
    outer = make_exp_repo(tmp_path / "outer", "fib").parents[1]  # outer/repo/experiments/fib
    inner = new_repo(outer / "sub" / "inner")
    (inner / "deep").mkdir()
    assert find_experiment_dir("fib", start=outer / "sub", root="") == outer / "experiments/fib"
    with pytest.raises(RatchetError, match="no experiment 'fib'"):
        find_experiment_dir("fib", start=inner / "deep", root="")
    assert find_experiment_dir("fib", start=inner / "deep", root=outer) == \
        outer / "experiments" / "fib"


def test_ratchet_run_outside_any_project_fails_and_leaves_the_clone_alone(
        tmp_path: Path) -> None:
    def clone_state() -> list[tuple[str, int]]:
        folder = REPO_ROOT / "experiments" / "linear"
        paths = [folder / n for n in ("SCORES.json", "MEMORY.json", "runs", "candidate.c")]
        head = git(REPO_ROOT, "rev-parse", "HEAD")
        return [(head, 0)] + [(str(p), p.stat().st_mtime_ns if p.exists() else 0) for p in paths]

    before = clone_state()
    env = {k: v for k, v in os.environ.items() if k != "RATCHET_ROOT"}
    proc = subprocess.run([RATCHET, "run", "linear", "--loop", "1"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    line = one_error_line(proc)
    assert "no experiment 'linear'" in line and str(tmp_path) in line
    assert "ratchet new linear" in line
    assert clone_state() == before


def test_root_option_and_env_find_another_project_and_come_first(
        fib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = fib.parents[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("RATCHET_ROOT", raising=False)
    out = CliRunner().invoke(main, ["--root", str(project), "scores", "fib"])
    assert out.exit_code == 0 and "fib scoreboard" in out.output, out.output
    assert "RATCHET_ROOT" not in os.environ  # --root lasts for its command only
    proc = run_ratchet("scores", "fib", cwd=elsewhere, env={"RATCHET_ROOT": str(project)})
    assert proc.returncode == 0 and "fib scoreboard" in proc.stdout, proc.stderr
    # an explicit --root wins over a same-named experiment where the command starts (the
    # other order ran, and committed, in the clone a test happened to start in)
    here = make_exp_repo(tmp_path / "here", "fib", tweaks={"unit": "ms"})
    monkeypatch.chdir(here.parents[1])
    assert find_experiment_dir("fib", root=project) == fib
    assert find_experiment_dir("fib", root="") == here


def test_python_dash_m_is_ratchet(tmp_path: Path) -> None:
    for args in (["--version"], ["new", "--list"]):
        via_m = subprocess.run([PYTHON, "-m", "ratchetloop", *args], cwd=tmp_path,
                               capture_output=True, text=True)
        direct = run_ratchet(*args, cwd=tmp_path)
        assert via_m.returncode == direct.returncode == 0
        assert via_m.stdout == direct.stdout
    assert direct.stdout.strip() != ""
    help_text = subprocess.run([PYTHON, "-m", "ratchetloop", "--help"], capture_output=True,
                               text=True).stdout
    assert "Usage: ratchet " in help_text and "--root" in help_text


def test_a_run_in_a_repository_without_commits_says_so(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "empty")
    shutil.copytree(REPO_ROOT / "experiments" / "fib", repo / "experiments" / "fib",
                    ignore=shutil.ignore_patterns("SCORES.*", "MEMORY.*", "runs", "winners",
                                                  "__pycache__"))
    line = one_error_line(run_ratchet("run", "fib", "--loop", "1", cwd=repo))
    assert "has no commits yet" in line and "ratchet new" in line


# ------------------------------------------------------------------ seed.py, any python3


@pytest.fixture
def system_python() -> Iterator[str]:
    """The system's python3, never the test venv's."""
    found = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    assert found, "no system python3"
    yield found


def test_seed_py_with_the_system_python(system_python: str, tmp_path: Path) -> None:
    """README's `python experiments/linear/seed.py` outside the venv: in a clone it hands
    over to the clone's .venv; in a user project to `ratchet seed` on PATH; with neither,
    one line saying what to install. (Old shims died with a ModuleNotFoundError.)"""
    base_path = "/usr/local/bin:/usr/bin:/bin"
    # a clone: src/ and .venv next to experiments/
    clone = make_exp_repo(tmp_path / "clone", "linear").parents[1]
    os.symlink(REPO_ROOT / "src", clone / "src")
    os.symlink(Path(sys.prefix), clone / ".venv")
    folder = clone / "experiments" / "linear"
    (folder / "candidate.c").write_text("/* edited */\n")
    proc = subprocess.run([system_python, "experiments/linear/seed.py"], cwd=clone,
                          capture_output=True, text=True, env={"PATH": base_path})
    assert proc.returncode == 0, proc.stderr
    assert (folder / "candidate.c").read_text() == (folder / "naive.c").read_text()
    # a user project made by `ratchet new`: no .venv, the `ratchet` command on PATH
    user = make_exp_repo(tmp_path / "user", "fib")
    (user / "candidate.py").write_text("# edited\n")
    proc = subprocess.run([system_python, str(user / "seed.py")], capture_output=True,
                          text=True, env={"PATH": f"{Path(RATCHET).parent}:{base_path}"})
    assert proc.returncode == 0, proc.stderr
    assert (user / "candidate.py").read_text() == (user / "naive.py").read_text()
    # neither: one clear line, exit 2 (unless this python3 has ratchetloop itself)
    has_it = subprocess.run([system_python, "-c", "import ratchetloop.seed"],
                            capture_output=True, cwd=tmp_path).returncode == 0
    proc = subprocess.run([system_python, str(user / "seed.py")], capture_output=True,
                          text=True, env={"PATH": base_path})
    if not has_it:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "cannot import ratchetloop" in proc.stderr and "pip install" in proc.stderr


def test_cli_new_without_a_name_is_a_usage_error_and_a_bad_name_one_line(
        tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["new"])
    assert out.exit_code == 2 and "ratchet new --list" in out.output
    new_repo(tmp_path / "proj")
    line = one_error_line(run_ratchet("new", "nope", cwd=tmp_path / "proj"))
    assert "no shipped experiment 'nope'" in line and "fib" in line
