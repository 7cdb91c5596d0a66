"""`ratchet init --explore --model M`: a model reads a small real project through the official
SDK talking to the fake server, proposes the contract, and the loop runs on what it wrote.
Bad proposals, a declined confirmation and a failing setup check write nothing; planted
secrets never reach a request."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_ratchet
from fakeservers import FakeModelServer
from generic_helpers import git, make_project

from ratchetloop import explore
from ratchetloop.cli import main
from ratchetloop.errors import RatchetError
from ratchetloop.generic import repoview
from ratchetloop.generic.explore import manual_command, parse_json
from ratchetloop.proposers.replay import ReplayProposer

ENV_SECRET = "sk-PLANTEDENVSECRET-0123456789abcdef"
KEYFILE_SECRET = "KEYFILE-CANARY-7f3e2d1c"
LINKED_SECRET = "SYMLINK-CANARY-9a8b7c6d"
INLINE_SECRET = "hunter2-INLINE-CANARY"
FILES = {
    "README.md": "# calc\n\nA tiny cost model. `python3 bench.py` prints `cost=<n> units`;"
                 " lower is better.\n",
    "pyproject.toml": "[project]\nname = \"calc\"\nversion = \"0.1\"\n",
    "calc.py": "def cost():\n    base = 10\n    return base\n",
    "bench.py": "from calc import cost\n\nprint('running')\nprint(f'cost={cost()} units')\n",
    "settings.py": f"DEBUG = True\npassword = \"{INLINE_SECRET}\"\n",
    ".env": f"OPENAI_API_KEY={ENV_SECRET}\n",
    "config/api_key.txt": f"{KEYFILE_SECRET}\n",
}
CONTRACT = {
    "tag": "calc", "run_command": "python3 bench.py",
    "metric": {"kind": "regex", "pattern": r"cost=(\d+)"}, "direction": "lower",
    "unit": "units", "editable": ["calc.py"], "readonly": ["bench.py"],
    "timeout_seconds": 60, "setup_check": "python3 -c 'import calc'",
    "check_command": None, "goal": "Lower what cost() returns.",
    "hypotheses": ["a smaller base"], "rationale": "bench.py prints cost=<n>",
}
STRUCTURE = "Python, one module calc.py; bench.py runs it."
METRICS = "bench.py prints `cost=<n> units`; lower is better; takes 50 ms."


@pytest.fixture(autouse=True)
def private_bench_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic metrics need no host-wide timing lock; don't queue behind benchmarks."""
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project, committed (secrets too: the explorer must not rely on .gitignore), with
    a tracked symlink to a secret outside it; the current directory is its root."""
    outside = tmp_path / "outside-secret.txt"
    outside.write_text(f"{LINKED_SECRET}\n")
    repo = make_project(tmp_path, FILES)
    os.symlink(outside, repo / "notes.txt")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-qm", "notes")
    monkeypatch.chdir(repo)
    return repo


def fenced(contract: dict) -> str:
    return f"Here is the contract:\n```json\n{json.dumps(contract, indent=2)}\n```\nDone."


def init(srv: FakeModelServer, *extra: str, input: str | None = None):  # noqa: A002, ANN201
    model = f"openai-compatible:fake@{srv.openai_base_url}"
    return CliRunner().invoke(main, ["init", "--explore", "--model", model, *extra], input=input)


def test_explore_writes_the_contract_init_writes_and_the_loop_runs_on_it(project: Path) -> None:
    loop_reply = "File: calc.py\n```python\ndef cost():\n    return 3\n```\nNote: three\n"
    with FakeModelServer([STRUCTURE, METRICS, fenced(CONTRACT), loop_reply],
                         default_text=None) as srv:
        out = init(srv, "--yes")
        assert out.exit_code == 0, out.output
        model = f"openai-compatible:fake@{srv.openai_base_url}"
        ran = run_ratchet("run", "calc", "--model", model, "--loop", "1", cwd=project,
                          env={"RATCHET_BENCH_LOCK": os.environ["RATCHET_BENCH_LOCK"]})
        posts = srv.posts()
    assert ran.returncode == 0, ran.stderr + ran.stdout
    folder = project / ".ratchet" / "calc"
    # shown (plain: not a terminal), checked, and what was spent
    assert "run: python3 bench.py" in out.output and "lower is better" in out.output
    assert "setup check `python3 -c 'import calc'` passed" in out.output
    assert "explorer: 3 request(s) to openai-compatible:fake, 360 tokens" in out.output
    # the very contract manual `ratchet init` writes from the command shown under "by hand"
    explored = json.loads((folder / "experiment.json").read_text())
    by_hand = explored_line(out.output, "by hand")
    again = CliRunner().invoke(main, [*shlex.split(by_hand)[1:], "--force"])
    assert again.exit_code == 0, again.output
    assert json.loads((folder / "experiment.json").read_text()) == explored
    assert explored["direction"] == "lower_is_better" and explored["unit"] == "units"
    assert explored["generic"]["metric"] == {"kind": "regex", "pattern": r"cost=(\d+)",
                                             "key": None, "channel": "auto"}
    assert "a smaller base" in (folder / "program.md").read_text()
    # explore.json: every prompt and reply with its usage, no key
    record = json.loads((folder / "explore.json").read_text())
    assert [s["name"] for s in record["steps"]] == ["structure", "metrics", "contract"]
    assert record["steps"][1]["reply"] == METRICS and record["usage"]["prompt_tokens"] == 300
    assert record["setup_check"]["ok"] is True
    # the view comes first in both analyses: a prompt cache pays for it once
    first, second = (p.body["messages"][0]["content"] for p in posts[:2])
    prefix = first[:first.index("Study the STRUCTURE")]
    assert "def cost()" in prefix and second.startswith(prefix)
    # the loop ran on it: the fake model's idea was measured and kept
    assert len(posts) == 4 and "Editable file: calc.py" in body_text(posts[3])
    rows = (folder / "results.tsv").read_text()
    assert "keep" in rows and "three" in rows
    assert "return 3" in git(project, "show", "ratchet/calc:calc.py")


def test_through_anthropic_with_the_cost_and_never_the_key(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-ant-EXPLORECANARY-0f1e2d3c4b5a"
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    with FakeModelServer([STRUCTURE, METRICS, fenced(CONTRACT)], default_text=None) as srv:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        out = CliRunner().invoke(main, ["init", "--explore", "--model", "claude-sonnet-4-6",
                                        "-y"])
        posts = srv.posts()
    assert out.exit_code == 0, out.output
    assert [p.path for p in posts] == ["/v1/messages"] * 3
    assert key in " ".join(posts[0].headers.values())  # sent, as the SDK sends it
    cost = float(re.search(r"estimated cost \$(\S+) \(prompts", out.output)[1])
    assert cost > 0  # a priced model: 150 prompt + 60 completion tokens
    record = (project / ".ratchet" / "calc" / "explore.json").read_text()
    assert key not in out.output + record + "".join(body_text(p) for p in posts)


def test_secrets_never_reach_a_request_or_the_record(project: Path) -> None:
    with FakeModelServer([STRUCTURE, METRICS, fenced(CONTRACT)], default_text=None) as srv:
        out = init(srv, "--yes")
        posts = srv.posts()
    assert out.exit_code == 0, out.output
    sent = "\n".join(body_text(p) for p in posts)
    assert "def cost()" in sent and "bench.py" in sent  # the view was there
    for secret in (ENV_SECRET, KEYFILE_SECRET, LINKED_SECRET, INLINE_SECRET):
        assert secret not in sent
    assert "api_key.txt" not in sent and ".env" not in sent and "notes.txt" not in sent
    assert repoview.WITHHELD in sent  # settings.py's password line
    record = (project / ".ratchet" / "calc" / "explore.json").read_text()
    assert ENV_SECRET not in record and INLINE_SECRET not in record


@pytest.mark.parametrize(("reply", "says"), [
    ("I would use bench.py and edit calc.py.", "the reply holds no JSON object"),
    (fenced({**CONTRACT, "metric": {"kind": "regex", "pattern": "cost=("}}), "is not a regex"),
    (fenced({**CONTRACT, "direction": "sideways"}), "field 'direction'"),
    (fenced({**CONTRACT, "editable": ["fast.py"]}), "no such file(s)"),
    (fenced({**CONTRACT, "editable": [".env"]}), "look(s) like a secret"),
    (fenced({**CONTRACT, "readonly": ["calc.py"]}), "both editable and read-only"),
])
def test_a_bad_proposal_is_one_line_exit_2_and_nothing_written(project: Path, reply: str,
                                                               says: str) -> None:
    with FakeModelServer([STRUCTURE, METRICS, reply], default_text=None) as srv:
        out = init(srv, "--yes")
    assert out.exit_code == 2, out.output
    assert says in out.output and "nothing written" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    assert "explorer: 3 request(s)" in out.output  # what it cost, even so
    assert not (project / ".ratchet").exists()


def test_a_bad_regex_is_one_line_for_manual_init_too(project: Path) -> None:
    out = CliRunner().invoke(main, ["init", "--tag", "t", "--edit", "calc.py", "--run", "x",
                                    "--metric-regex", "cost=(", "--lower-is-better"])
    assert out.exit_code == 2 and "is not a regex" in out.output, out.output
    assert not (project / ".ratchet").exists()


def test_declining_writes_nothing(project: Path) -> None:
    with FakeModelServer([STRUCTURE, METRICS, fenced(CONTRACT)], default_text=None) as srv:
        out = init(srv, input="n\n")
    assert out.exit_code == 1, out.output
    assert "write it (after its setup check)?" in out.output and "declined" in out.output
    assert "setup check `" not in out.output  # it never ran
    assert not (project / ".ratchet").exists()


def test_a_failing_setup_check_is_reported_and_nothing_written(project: Path) -> None:
    failing = {**CONTRACT, "setup_check": "python3 -c 'import numpy_is_not_here'"}
    with FakeModelServer([STRUCTURE, METRICS, fenced(failing)], default_text=None) as srv:
        out = init(srv, input="y\n")
    assert out.exit_code == 2, out.output
    assert "setup check `python3 -c 'import numpy_is_not_here'` failed (exit 1)" in out.output
    assert "ModuleNotFoundError" in out.output  # its output, to fix it
    assert "ratchet init --tag calc --edit calc.py" in out.output  # or write it by hand
    assert not (project / ".ratchet").exists()


def test_flags_override_the_proposal_and_the_tag_is_asked_for(project: Path) -> None:
    with FakeModelServer([STRUCTURE, METRICS, fenced(CONTRACT)], default_text=None) as srv:
        out = init(srv, "--yes", "--tag", "mine", "--timeout", "9", "--metric-fd")
        posts = srv.posts()
    assert out.exit_code == 0, out.output
    assert "Use the tag 'mine'." in body_text(posts[2])
    contract = json.loads((project / ".ratchet" / "mine" / "experiment.json").read_text())
    assert contract["timeout_seconds"] == 9 and contract["generic"]["tag"] == "mine"
    assert contract["generic"]["metric"]["channel"] == "fd"
    assert contract["generic"]["metric"]["pattern"] == r"cost=(\d+)"  # the proposal's


def test_explore_needs_a_model_and_model_needs_explore(project: Path) -> None:
    out = CliRunner().invoke(main, ["init", "--explore"])
    assert out.exit_code == 2 and "needs a language model" in out.output
    out = CliRunner().invoke(main, ["init", "--model", "gpt-4.1-mini", "--tag", "x"])
    assert out.exit_code == 2 and "go with --explore" in out.output


def test_python_api_explores_and_runs(project: Path) -> None:
    seen: list[str] = []
    proposer = ReplayProposer([STRUCTURE, METRICS, fenced(CONTRACT)])
    found = explore(proposer, project, confirm=lambda text: seen.append(text) or True)
    assert found.folder == project / ".ratchet" / "calc"
    assert found.contract["generic"]["run_command"] == "python3 bench.py"
    assert found.setup_check is not None and found.setup_check["ok"]
    assert "setup check: python3 -c 'import calc'" in seen[0]
    result = found.run(ReplayProposer([
        "File: calc.py\n```python\ndef cost():\n    return 4\n```\nNote: four\n"]), 1)
    assert (result.seed_metric, result.best_metric) == (10, 4)
    with pytest.raises(RatchetError, match="declined: nothing written"):
        explore(ReplayProposer([STRUCTURE, METRICS, fenced({**CONTRACT, "tag": "other"})]),
                project, confirm=lambda text: False)
    assert not (project / ".ratchet" / "other").exists()


@pytest.mark.parametrize("text", [
    '```json\n{"a": 1}\n```', '{"a": 1}', 'Sure! {"a": 1} is it.',
    'Notes {"x": 2} then ```\n{"a": 1}\n```', 'first {"b": {"c": 1}} and {"a": 1}',
])
def test_json_is_found_fenced_or_bare(text: str) -> None:
    assert parse_json(text) in ({"a": 1}, {"b": {"c": 1}})
    assert parse_json('x {"b": {"c": 1}} y {"a": 1}') == {"b": {"c": 1}}  # the largest


def test_research_json_names_are_understood() -> None:
    from ratchetloop.generic.explore import Proposed

    names = {"modifiable_files": ["calc.py"], "readonly_files": ["bench.py"],
             "metric_direction": "higher"}
    plain = {k: v for k, v in CONTRACT.items() if k not in ("editable", "readonly", "direction")}
    values = Proposed.model_validate({**plain, **names}).values()
    assert (values["editable"], values["readonly"], values["higher_is_better"]) == (
        ["calc.py"], ["bench.py"], True)


def test_the_view_is_bounded(tmp_path: Path) -> None:
    files = {f"src/m{i:03d}.py": "x = 1\n" * 2000 for i in range(400)}
    repo = make_project(tmp_path, {"README.md": "r\n", **files})
    view = repoview.gather(repo)
    assert len(view.listing) == repoview.LISTING_MAX and view.total_files == 401
    assert "... and 101 more tracked files" in view.listing_text()
    assert all(len(t) <= repoview.FILE_MAX for t in view.files.values())
    assert sum(len(t) for t in view.files.values()) <= repoview.TOTAL_MAX
    assert view.files_text().count("(cut short)") >= 1


def test_manual_command_quotes(project: Path) -> None:
    values = {"tag": "t", "editable": ["a b.py"], "run_command": "python3 x.py | tail -1",
              "metric": parse_metric(r"v=(\S+)"), "higher_is_better": True, "timeout": 5.0}
    assert shlex.split(manual_command(values)) == [
        "ratchet", "init", "--tag", "t", "--edit", "a b.py", "--run", "python3 x.py | tail -1",
        "--metric-regex", r"v=(\S+)", "--higher-is-better", "--timeout", "5"]


def explored_line(output: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in output.splitlines()
                if line.strip().startswith(f"{key}: "))


def body_text(post) -> str:  # noqa: ANN001
    return json.dumps(post.body)


def parse_metric(pattern: str):  # noqa: ANN201
    from ratchetloop.generic.contract import MetricSpec

    return MetricSpec(kind="regex", pattern=pattern)


def test_an_existing_tag_is_refused_before_any_request(project: Path) -> None:
    existing = project / ".ratchet" / "calc" / "experiment.json"
    existing.parent.mkdir(parents=True)
    existing.write_text("{}\n")
    with FakeModelServer([STRUCTURE, METRICS, fenced(CONTRACT)], default_text=None) as srv:
        out = init(srv, "--yes", "--tag", "calc")
        posts = srv.posts()
    assert out.exit_code == 2 and "exists: pass --force to overwrite" in out.output
    assert posts == []  # nothing paid for
