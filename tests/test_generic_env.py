"""Generic mode's environment, end to end: `ratchet init` + `ratchet run` in a real git
project whose command must run with the project's own venv and see only the variables the
contract passes through (--env); secrets are refused by name and by value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from generic_helpers import calc_reply, make_project

from ratchetloop.cli import main

# The benchmark refuses to measure unless it runs with the project's venv and sees FOO=1.
BENCH = """import os
import sys
from calc import cost

print(f"prefix={{sys.prefix}}")
assert os.path.realpath(sys.prefix) == os.path.realpath({venv!r}), "not the project venv"
value = cost() * int(os.environ["FOO"])
fd = os.environ.get("RATCHET_RESULT_FD")
if fd:
    os.write(int(fd), f"{{value}}\\n".encode())
"""


@pytest.fixture(autouse=True)
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No activated venv or conda env from whoever runs the tests; a private timing lock;
    lines wide enough that rich does not fold a long path."""
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))


def venv_project(tmp_path: Path) -> tuple[Path, Path]:
    """A repository with an untracked project-local .venv (as `python -m venv .venv` makes)."""
    venv = tmp_path / "proj" / ".venv"
    repo = make_project(tmp_path, {"calc.py": "def cost():\n    return 10\n",
                                   "bench.py": BENCH.format(venv=str(venv)),
                                   ".gitignore": ".venv/\n"})
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return repo, venv


def replay(tmp_path: Path) -> str:
    """A scripted model whose one reply lowers the metric."""
    script = tmp_path / "replies.json"
    script.write_text(json.dumps([calc_reply(5, "five")]))
    return f"replay:{script}"


def init_args(*extra: str) -> list[str]:
    return ["init", "--tag", "env", "--edit", "calc.py", "--read", "bench.py", "--run",
            "python3 bench.py", "--lower-is-better", "--unit", "pts", *extra]


def test_the_command_runs_with_the_project_venv_and_gets_env_values_not_in_prompts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, venv = venv_project(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("FOO", "1")
    runner = CliRunner()
    out = runner.invoke(main, init_args("--env", "FOO",
                                        "--setup-check", f"test \"$FOO\" = 1 && python3 -c"
                                        f" 'import sys; assert sys.prefix == \"{venv}\"'"))
    assert out.exit_code == 0, out.output
    assert f"python3 = {venv}/bin/python3" in out.output and "project venv .venv/" in out.output
    contract = (repo / ".ratchet/env/experiment.json").read_text()
    assert json.loads(contract)["generic"]["env"] == ["FOO"] and "=1" not in contract

    out = runner.invoke(main, ["run", "env", "--model", replay(tmp_path), "--loop", "1"])
    assert out.exit_code == 0, out.output
    attempt = json.loads((repo / ".ratchet/env/runs/0001/attempt.json").read_text())
    assert attempt["status"] == "accepted_best", attempt
    prompt = (repo / ".ratchet/env/runs/0001/prompt.md").read_text()
    assert "Metric: `python3 bench.py` prints it" in prompt and "FOO=1" not in prompt


def test_a_venv_named_by_a_relative_path_in_the_command_gets_a_note(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = venv_project(tmp_path)
    monkeypatch.chdir(repo)
    args = init_args()
    args[args.index("python3 bench.py")] = ".venv/bin/python bench.py"
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "copy of your tracked files" in out.output


@pytest.mark.parametrize(("name", "why"), [
    ("OPENAI_API_KEY", "OPENAI_API_KEY looks like a secret"),
    ("HF_TOKEN", "HF_TOKEN looks like a secret"),
    ("PATH", "PATH cannot be passed: set it with generic.path"),
    ("1BAD", "'1BAD' is not a variable name"),
])
def test_init_refuses_secret_or_reserved_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               name: str, why: str) -> None:
    repo, _ = venv_project(tmp_path)
    monkeypatch.chdir(repo)
    out = CliRunner().invoke(main, init_args("--env", name))
    assert out.exit_code == 2, out.output
    assert out.output.startswith(f"error: refused --env: {why}"), out.output
    assert not (repo / ".ratchet/env/experiment.json").exists()


def test_a_value_holding_a_secret_is_refused_at_init_and_at_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = venv_project(tmp_path)
    monkeypatch.chdir(repo)
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("FOO", f"--key={secret}")
    runner = CliRunner()
    out = runner.invoke(main, init_args("--env", "FOO"))
    assert out.exit_code == 2 and "FOO" in out.output and "secret" in out.output
    assert secret not in out.output
    assert not (repo / ".ratchet/env/experiment.json").exists()

    monkeypatch.setenv("FOO", "1")  # clean at init ...
    assert runner.invoke(main, init_args("--env", "FOO")).exit_code == 0
    monkeypatch.setenv("FOO", f"x{secret}")  # ... a secret by the time of the run
    out = runner.invoke(main, ["run", "env", "--model", replay(tmp_path), "--loop", "1"])
    assert out.exit_code == 2, out.output
    assert "refused --env: FOO" in out.output and secret not in out.output
    assert not list((repo / ".ratchet/env").glob("runs/*/attempt.json"))


def test_a_hand_edited_secret_name_in_the_contract_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = venv_project(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("FOO", "1")
    runner = CliRunner()
    assert runner.invoke(main, init_args("--env", "FOO")).exit_code == 0
    path = repo / ".ratchet/env/experiment.json"
    data = json.loads(path.read_text())
    data["generic"]["env"] = ["FOO", "GITHUB_TOKEN"]
    path.write_text(json.dumps(data))
    out = runner.invoke(main, ["run", "env", "--model", replay(tmp_path), "--loop", "1"])
    assert out.exit_code == 2, out.output
    assert "generic.env" in out.output and "GITHUB_TOKEN looks like a secret" in out.output
    assert "Traceback" not in out.output


def test_explicit_timeout_300_wins_over_research_json(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = venv_project(tmp_path)
    monkeypatch.chdir(repo)
    research = tmp_path / "research.json"
    research.write_text(json.dumps({"run_command": "python3 bench.py", "tag": "env",
                                    "modifiable_files": ["calc.py"], "timeout_seconds": 60}))
    runner = CliRunner()
    out = runner.invoke(main, ["init", "--from-research", str(research), "--timeout", "300",
                               "--lower-is-better"])
    assert out.exit_code == 0, out.output
    contract = repo / ".ratchet/env/experiment.json"
    assert json.loads(contract.read_text())["timeout_seconds"] == 300
    out = runner.invoke(main, ["init", "--from-research", str(research), "--lower-is-better",
                               "--force"])
    assert out.exit_code == 0, out.output
    assert json.loads(contract.read_text())["timeout_seconds"] == 60  # not given: research's


def test_the_commands_path_starts_with_the_venv_and_has_no_relative_entries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A '.' or empty PATH entry would search the run's directory, which a candidate wrote."""
    repo, venv = venv_project(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f".::{os.environ['PATH']}")
    monkeypatch.setenv("FOO", "1")
    check = ("python3 -c 'import os, sys; p = os.environ[\"PATH\"].split(\":\");"
             f" sys.exit(p[0] != \"{venv}/bin\" or any(not d.startswith(\"/\") for d in p))'")
    out = CliRunner().invoke(main, init_args("--env", "FOO", "--setup-check", check))
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(main, ["run", "env", "--model", replay(tmp_path), "--until", "0"])
    assert out.exit_code == 0, out.output
