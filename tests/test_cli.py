"""The `ratchet` CLI: user-fixable problems give ONE clear line on stderr and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import ITERATIVE, PYTHON, RATCHET, git, reply, run_ratchet, write_replay

from ratchetloop.cli import main
from ratchetloop.lock import experiment_lock


def one_error_line(result) -> str:
    """The command failed with exit 2 and exactly one line on stderr, no traceback."""
    code = getattr(result, "returncode", getattr(result, "exit_code", None))
    err = result.stderr
    assert code == 2, (code, err, getattr(result, "stdout", ""))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def set_contract(folder: Path, text: str) -> None:
    (folder / "experiment.json").write_text(text, encoding="utf-8")


def contract(folder: Path) -> dict:
    return json.loads((folder / "experiment.json").read_text())


@pytest.mark.parametrize("breakage, named", [
    (lambda d: "{ not json", "not valid JSON"),
    (lambda d: json.dumps({**d, "timeout_seconds": "soon"}), "timeout_seconds"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "naive"}), "naive"),
    (lambda d: json.dumps({**d, "target": {**d["target"], "function": 3}}), "target.function"),
    (lambda d: json.dumps({**d, "acceptance": {**d["acceptance"], "confidence": 2}}),
     "acceptance.confidence"),
])
def test_bad_experiment_json_is_one_line_naming_the_field(fib: Path, breakage, named) -> None:
    set_contract(fib, breakage(contract(fib)))
    for args in (["run", str(fib), "--loop", "1"], ["scores", str(fib)]):
        line = one_error_line(cli(*args))
        assert named in line and "experiment.json" in line, line


def test_missing_experiment_json(tmp_path: Path) -> None:
    line = one_error_line(cli("run", str(tmp_path / "nowhere"), "--loop", "1"))
    assert "experiment.json" in line


def test_missing_naive_file(fib: Path) -> None:
    (fib / "naive.py").unlink()
    line = one_error_line(cli("run", str(fib), "--loop", "1"))
    assert "naive.py" in line


def test_missing_compiler_is_named_up_front(exp_repo, tmp_path: Path) -> None:
    folder = exp_repo("linear", cases=["small_nobias"])
    bindir = tmp_path / "bin"  # git and python, but no gcc
    bindir.mkdir()
    for tool in ("git",):
        os.symlink(shutil.which(tool), bindir / tool)
    proc = run_ratchet("run", str(folder), "--model", "tuner", "--loop", "1", cwd=folder,
                       env={"PATH": str(bindir)})
    line = one_error_line(proc)
    assert "gcc" in line and "PATH" in line
    assert not (folder / "SCORES.json").exists()


def test_folder_not_in_a_git_repo(tmp_path: Path) -> None:
    from conftest import EXPERIMENTS
    folder = tmp_path / "plain" / "fib"
    shutil.copytree(EXPERIMENTS / "fib", folder,
                    ignore=shutil.ignore_patterns("SCORES.*", "MEMORY.*", "runs", "winners",
                                                  "__pycache__"))
    line = one_error_line(cli("run", str(folder), "--loop", "1"))
    assert "not inside a git repository" in line


def test_detached_head(fib: Path) -> None:
    repo = fib.parents[1]
    git(repo, "checkout", "-q", "--detach")
    line = one_error_line(cli("run", str(fib), "--loop", "1"))
    assert "detached HEAD" in line


def test_corrupt_scores_json_is_named_and_kept(fib: Path) -> None:
    broken = '{"experiment": "fib", "unit": "us", "direction": "lower_is_better", "rows": [{'
    (fib / "SCORES.json").write_text(broken)
    for args in (["run", str(fib), "--loop", "1"], ["scores", str(fib)], ["best", str(fib)]):
        line = one_error_line(cli(*args))
        assert "SCORES.json" in line, line
    assert (fib / "SCORES.json").read_text() == broken  # never overwritten


def test_wrong_type_in_memory_json_is_named(fib: Path) -> None:
    (fib / "MEMORY.json").write_text('{"worked": 3}')
    line = one_error_line(cli("run", str(fib), "--loop", "1"))
    assert "MEMORY.json" in line and "worked" in line


def test_second_loop_names_the_holder(fib: Path) -> None:
    with experiment_lock(fib):
        proc = run_ratchet("run", str(fib), "--loop", "1", cwd=fib)
    line = one_error_line(proc)
    assert f"pid {os.getpid()}" in line and "busy" in line


def test_legacy_loop_py_and_read_commands(fib: Path, tmp_path: Path) -> None:
    """`python loop.py fib --model M --loop N` as in the reference, then scores/best/history."""
    repo = fib.parents[1]
    shutil.copy(Path(__file__).resolve().parents[1] / "loop.py", repo / "loop.py")
    model = write_replay(tmp_path / "r.json", [reply(ITERATIVE, "iterate bottom-up")])
    proc = __import__("subprocess").run(
        [PYTHON, "loop.py", "fib", "--model", model, "--loop", "1"], cwd=repo,
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "accepted_best" in proc.stdout
    sc = json.loads((fib / "SCORES.json").read_text())
    sha = sc["best_commit"]
    out = cli("scores", str(fib))
    assert out.exit_code == 0 and sha in out.output and "best winner" in out.output
    out = cli("best", str(fib))
    assert out.exit_code == 0 and "a, b = b, a + b" in out.output and sha in out.output
    out = cli("history", str(fib))
    assert out.exit_code == 0 and "accepted_best" in out.output
    # rollback to the seed, then back to the best
    (fib / "candidate.py").write_text("garbage\n")
    out = cli("rollback", str(fib))
    assert out.exit_code == 0 and (fib / "candidate.py").read_text() == ITERATIVE
    out = cli("rollback", str(fib), "seed")
    assert out.exit_code == 0 and "return fib(n - 1)" in (fib / "candidate.py").read_text()
    line = one_error_line(cli("rollback", str(fib), "deadbee"))
    assert "deadbee" in line
    assert Path(RATCHET).exists()


# Modules a command that runs no loop must never import: each costs tenths of a second and
# tens of MiB at start-up (issue "a loop that costs nothing": <= 0.3 s, <= 60 MiB per command;
# benchmarks/bench_startup.py measures it, this guards the cause).
HEAVY = ("scipy", "numpy", "openai", "anthropic", "optuna", "plotly", "matplotlib")
PROBE = """
import json, sys
from ratchetloop.cli import main
out, args = sys.argv[1], sys.argv[2:]
try:
    main(args, prog_name="ratchet")
finally:
    with open(out, "w") as fh:
        json.dump(sorted(sys.modules), fh)
"""


@pytest.mark.parametrize("args", [
    ["--help"], ["scores", "{fib}"], ["history", "{fib}"], ["best", "{fib}"], ["models"],
    ["doctor"], ["init", "--help"], ["run", "--help"], ["seed", "--help"],
    ["history", "{fib}", "--json"], ["history", "{fib}", "--csv"], ["status", "{fib}"],
    ["status"], ["show", "--help"], ["report", "--help"],
])
def test_commands_without_a_loop_import_no_heavy_module(fib: Path, tmp_path: Path,
                                                        args: list[str]) -> None:
    """Each command runs in a fresh interpreter; what it imported is read from sys.modules."""
    out = tmp_path / "modules.json"
    argv = [a.format(fib=fib) for a in args]
    proc = subprocess.run(
        [PYTHON, "-c", PROBE, str(out), *argv], cwd=fib, capture_output=True, text=True,
        timeout=60, env={**os.environ, "OLLAMA_HOST": "http://127.0.0.1:9"})
    expected = 2 if args[0] == "best" else 0  # `best` on a fresh fib: "no winner yet"
    assert proc.returncode == expected, proc.stderr
    loaded = json.loads(out.read_text())
    assert "ratchetloop.cli" in loaded  # the probe really ran the CLI
    heavy = sorted({m.partition(".")[0] for m in loaded} & set(HEAVY))
    assert not heavy, f"ratchet {' '.join(args)} imported {heavy}"


class _Messages:
    """A reporter that keeps what it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_host_probe_samples_in_the_background_and_spares_our_children(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`ratchet run` does not wait for the CPU-hog sample before its first proposal; the
    sample still speaks, and a process we started (the seed's eval) is not "other" load."""
    from ratchetloop import loop, sandbox, stability

    release = threading.Event()
    child = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)

    def sample(*_: object, **__: object) -> list[stability.Hog]:
        release.wait(30)  # the sample window: held open until the test has looked
        return [stability.Hog(child.pid, "our-eval", 1.0), stability.Hog(1, "other-job", 0.9)]

    monkeypatch.setattr(stability, "cpu_hogs", sample)
    monkeypatch.setattr(stability, "check_host",
                        lambda sample_seconds=0.25: stability.HostReport(2, 9.0, warnings=["busy"]))
    monkeypatch.setattr(sandbox, "missing_layers", lambda: [])
    reporter = _Messages()
    try:
        wait = loop.warn_if_host_busy(SimpleNamespace(reporter=reporter))  # type: ignore[arg-type]
        assert reporter.lines == ["[yellow]host: busy[/]"]  # said at once; sample still open
        release.set()
        wait()
    finally:
        release.set()
        child.communicate(b"")
    assert len(reporter.lines) == 2
    assert "other-job (pid 1, 90%)" in reporter.lines[1]
    assert "our-eval" not in reporter.lines[1] and str(child.pid) not in reporter.lines[1]


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module `path` (in `package`) imports, at module level or inside a function."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
            base = ".".join(x for x in (base, node.module or "") if x)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_nothing_in_the_package_imports_the_cli() -> None:
    """The CLI is the top of the import graph, so no cycle can run through it: seed.py (run
    by experiments' seed.py files) gets the one-line error from display.py, not from cli.py.
    __main__.py (`python -m ratchetloop`) is the CLI's other entry point, above it."""
    src = Path(__file__).resolve().parents[1] / "src"
    importers = []
    for path in sorted((src / "ratchetloop").rglob("*.py")):
        package = ".".join(path.parent.relative_to(src).parts)
        if path.name not in ("cli.py", "__main__.py") or package != "ratchetloop":
            if "ratchetloop.cli" in _imported_modules(path, package):
                importers.append(str(path.relative_to(src)))
    assert importers == []
    assert "ratchetloop.seed" in _imported_modules(src / "ratchetloop" / "cli.py", "ratchetloop")
