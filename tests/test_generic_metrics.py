"""Named secondary metrics, constraints and the sandbox's built-in metrics in generic mode:
real git repositories, real commands in the sandbox, replayed replies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from generic_helpers import git, make_project
from pydantic import ValidationError

from ratchetloop import experiment as experiment_mod
from ratchetloop import sandbox
from ratchetloop.errors import RatchetError
from ratchetloop.generic import session_parts
from ratchetloop.generic.cli import init_command, named_metrics
from ratchetloop.generic.constraints import BUILTIN, broken, parse
from ratchetloop.generic.contract import GenericSpec, MetricSpec, NamedMetric, spec_of
from ratchetloop.generic.init import init_project
from ratchetloop.generic.results import ResultsReporter, read_rows
from ratchetloop.loop import Options, Outcome, QuietReporter, run_loop
from ratchetloop.proposers.replay import ReplayProposer
from ratchetloop.scores import Scores

BENCH = """import json, os
from calc import cost, memory

value = cost()
fd = os.environ.get("RATCHET_RESULT_FD")
if fd:
    os.write(int(fd), f"{value}\\n".encode())
print(json.dumps({"cost": value, **({"mem_gb": memory()} if memory() is not None else {})}))
"""


def calc(cost: int, mem: float | None, extra: str = "") -> str:
    return f"{extra}def cost():\n    return {cost}\n\n\ndef memory():\n    return {mem!r}\n"


def reply(cost: int, mem: float | None, note: str, extra: str = "") -> str:
    return f"File: calc.py\n```python\n{calc(cost, mem, extra)}```\nNote: {note}\n"


@pytest.fixture(autouse=True)
def private_bench_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic metrics need no host-wide timing lock; don't queue behind benchmarks."""
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))


def run(exp: experiment_mod.Experiment, replies: list[str], n: int):  # noqa: ANN201
    reporter, workspace = session_parts(exp, QuietReporter())
    return run_loop(exp, ReplayProposer(replies), Options(iterations=n), reporter, workspace)


def test_constraints_reject_and_every_metric_is_recorded(tmp_path: Path) -> None:
    repo = make_project(tmp_path, {"calc.py": calc(10, 2.0), "bench.py": BENCH})
    folder = init_project(repo, tag="calc", editable=["calc.py"], readonly=["bench.py"],
                          run_command="python3 bench.py", metric=MetricSpec(channel="fd"),
                          metrics={"mem_gb": NamedMetric(kind="json_key", key="mem_gb")},
                          constraints=["mem_gb<=4", "peak_rss_mb<=150"])
    exp = experiment_mod.load(folder)
    hog = "_HOG = b'x' * (300 << 20)  # resident: every page written\n\n\n"
    summary = run(exp, [reply(5, 2.5, "five"), reply(2, 8.0, "two, more memory"),
                        reply(1, 1.0, "one, big table", extra=hog),
                        reply(3, None, "three, stops reporting memory")], 4)
    got = [(o.status, o.failure_kind) for o in summary.outcomes]
    assert got == [("accepted_best", None), ("failed", "constraint"), ("failed", "constraint"),
                   ("failed", "constraint")]
    messages = [o.message for o in summary.outcomes[1:]]
    assert "mem_gb=8" in messages[0] and "breaks mem_gb<=4" in messages[0]
    assert "peak_rss_mb=" in messages[1] and "breaks peak_rss_mb<=150" in messages[1]
    assert "mem_gb not reported" in messages[2]

    rows = read_rows(folder / "results.tsv")
    header = (folder / "results.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["commit", "metric", "mem_gb", *BUILTIN, "status", "description"]
    assert [r["status"] for r in rows] == ["keep", "discard", "discard", "discard"]
    assert rows[0]["metric"] == "5" and rows[0]["mem_gb"] == "2.5" and rows[1]["mem_gb"] == "8"
    assert float(rows[2]["peak_rss_mb"]) > 250 > float(rows[0]["peak_rss_mb"]) > 0
    assert all(float(r["wall_seconds"]) > 0 and float(r["cpu_seconds"]) > 0 for r in rows)
    assert "[constraint: mem_gb=8" in rows[1]["description"]

    scores = json.loads((folder / "SCORES.json").read_text())
    assert scores["seed"]["metrics"]["mem_gb"] == 2.0
    assert scores["rows"][0]["metrics"]["mem_gb"] == 2.5
    assert set(BUILTIN) <= set(scores["rows"][0]["metrics"])
    assert "| Metrics |" in (folder / "SCORES.md").read_text()
    assert "mem_gb=2.5" in (folder / "SCORES.md").read_text()
    result = json.loads((folder / "runs/0002/result.json").read_text())
    assert result["info"]["metrics"]["candidate"]["mem_gb"] == 8.0
    assert result["info"]["constraints"]["checked"] == ["mem_gb<=4", "peak_rss_mb<=150"]
    attempt = json.loads((folder / "runs/0002/attempt.json").read_text())
    assert attempt["metrics"]["mem_gb"] == 8.0
    trailer = git(repo, "log", "-1", "--format=%B", "ratchet/calc")
    assert '"mem_gb":2.5' in trailer  # a winner's metrics survive in git (reconcile)


def test_a_seed_that_breaks_a_constraint_stops_the_run_up_front(tmp_path: Path) -> None:
    repo = make_project(tmp_path, {"calc.py": calc(10, 9.0), "bench.py": BENCH})
    folder = init_project(repo, tag="calc", editable=["calc.py"], readonly=["bench.py"],
                          run_command="python3 bench.py",
                          metrics={"mem_gb": NamedMetric(kind="json_key", key="mem_gb")},
                          constraints=["mem_gb<=4"])
    with pytest.raises(RatchetError, match=r"seed breaks .*mem_gb=9 .*breaks mem_gb<=4"):
        run(experiment_mod.load(folder), [reply(5, 1.0, "five")], 1)


def test_sandbox_reports_the_peak_rss_of_the_process_tree(tmp_path: Path) -> None:
    big = sandbox.run(["python3", "-c", "x = b'x' * (200 << 20)"], cwd=tmp_path, timeout=60)
    small = sandbox.run(["/bin/sh", "-c", "true"], cwd=tmp_path, timeout=60)
    child = sandbox.run(["/bin/sh", "-c", "python3 -c \"x = b'x' * (200 << 20)\"; true"],
                        cwd=tmp_path, timeout=60)
    assert big.ok and small.ok and child.ok
    assert big.peak_rss_mb is not None and small.peak_rss_mb is not None
    assert big.peak_rss_mb > 200 > 64 > small.peak_rss_mb
    assert child.peak_rss_mb is not None and child.peak_rss_mb > 200  # a grandchild counts


@pytest.mark.parametrize("text, why", [
    ("peak_rss_mb=<4", "write NAME<=NUMBER"),
    ("peak_rss_mb<=", "write NAME<=NUMBER"),
    ("peak_rss_mb<=4 or 5", "write NAME<=NUMBER"),
    ("peak_rss_mb<=nan", "write NAME<=NUMBER"),
    ("peak_rss_mb<=1e999", "finite"),
    ("vram_gb<=4", "no metric 'vram_gb'"),
])
def test_constraints_parse_strictly(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse(text, ["metric", *BUILTIN])
    with pytest.raises(ValidationError, match=why):
        GenericSpec(tag="t", editable=["a.py"], run_command="x", constraints=[text])


def test_constraint_rules() -> None:
    c = parse(" mem_gb >= 1.5 ", ["mem_gb"])
    assert (c.name, c.op, c.bound, str(c)) == ("mem_gb", ">=", 1.5, "mem_gb>=1.5")
    runs = [{"mem_gb": 1.0}, {"mem_gb": 2.0}, {"mem_gb": 2.0}]
    assert broken([c], runs) == []  # the median holds
    assert broken([c], runs[:1]) == ["mem_gb=1 (median of 1 run(s)) breaks mem_gb>=1.5"]
    assert "not reported" in broken([c], [{"mem_gb": 2.0}, {}])[0]


def test_named_metric_contract_is_validated(tmp_path: Path) -> None:
    base = {"tag": "t", "editable": ["a.py"], "run_command": "x"}
    with pytest.raises(ValidationError, match="result channel carries the primary"):
        GenericSpec(**base, metrics={"m": {"channel": "fd"}})
    with pytest.raises(ValidationError, match="built in"):
        GenericSpec(**base, metrics={"peak_rss_mb": {}})
    with pytest.raises(ValidationError, match="letters, digits"):
        GenericSpec(**base, metrics={"mem-gb": {}})
    spec = GenericSpec(**base, metrics={"mem_gb": {"kind": "json_key", "key": "mem"}},
                       constraints=["mem_gb<=4", "metric<10"])
    assert [str(c) for c in spec.parsed_constraints()] == ["mem_gb<=4", "metric<10"]
    assert GenericSpec(**base).metrics == {}  # the single-metric contract is unchanged
    assert named_metrics(["mem_gb=mem=(\\S+)"])["mem_gb"].pattern == "mem=(\\S+)"
    for bad in ("mem_gb", "=x=(\\S+)", "mem_gb=no group"):
        with pytest.raises(RatchetError):
            named_metrics([bad])
    repo = make_project(tmp_path, {"calc.py": calc(1, 1.0), "bench.py": BENCH})
    with pytest.raises(RatchetError, match="no metric 'vram'"):
        init_command({"tag": "t", "editable": ["calc.py"], "run_command": "python3 bench.py",
                      "constraint": ["vram<=4"], "higher_is_better": False}, cwd=repo)


def test_results_tsv_gains_columns_when_the_contract_does(tmp_path: Path) -> None:
    scores = Scores(experiment="x", unit="", direction="lower_is_better")
    old = ResultsReporter(QuietReporter(), tmp_path)
    old.outcome(Outcome(iteration=1, status="rejected", note="first", score=3.0,
                        metrics={"wall_seconds": 1.5}), scores)
    new = ResultsReporter(QuietReporter(), tmp_path, ["loss2"])
    new.outcome(Outcome(iteration=2, status="rejected", note="second", score=2.0,
                        metrics={"loss2": 0.25, "metric": 2.0}), scores)
    lines = (tmp_path / "results.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["commit", "metric", "loss2", *BUILTIN, "status",
                                    "description"]
    rows = read_rows(tmp_path / "results.tsv")
    assert [(r["metric"], r["loss2"], r["wall_seconds"]) for r in rows] == [
        ("3", "", "1.5"), ("2", "0.25", "")]


def test_experiment_relative_contract_works_wherever_the_folder_lands(tmp_path: Path) -> None:
    """A folder whose contract says relative_to=experiment is copied to another depth of
    another repository and still runs: paths and commands resolve from the folder."""
    src = tmp_path / "src"
    src.mkdir()
    contract = {
        "name": "calc", "target": {"file": "candidate.bundle", "function": "",
                                   "language": "python"},
        "naive": "seed.bundle", "unit": "", "cases": [{"name": "metric"}],
        "acceptance": {"min_rounds": 3, "max_rounds": 3, "batch_rounds": 3},
        "generic": {"tag": "calc", "relative_to": "experiment", "editable": ["calc.py"],
                    "readonly": ["bench.py"], "run_command": "python3 bench.py {target}",
                    "metric": {"kind": "json_key", "key": "cost"},
                    "metrics": {"mem_gb": {"kind": "json_key", "key": "mem_gb"}},
                    "constraints": ["mem_gb<=4"]}}
    files = {"experiment.json": json.dumps(contract), "calc.py": calc(10, 1.0),
             "bench.py": BENCH.replace("import json, os", "import json, os, sys\n"
                                       "assert sys.argv[1] == 'calc.py', sys.argv"),
             "prompt.py": "from ratchetloop.generic.prompting import build_prompt as build\n",
             "security.py": "def check(source):\n    return []\n"}
    for rel, text in files.items():
        (src / rel).write_text(text)
    repo = make_project(tmp_path / "user", {"README": "mine\n"})
    folder = repo / "deep" / "er" / "calc"
    shutil.copytree(src, folder)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "add the experiment")
    exp = experiment_mod.load(folder)
    spec = spec_of(exp)
    assert spec.editable == ["deep/er/calc/calc.py"]
    assert spec.run_command == "cd deep/er/calc && python3 bench.py calc.py"
    summary = run(exp, [reply(4, 1.0, "four"), reply(1, 9.0, "one, heavy")], 2)
    assert [(o.status, o.failure_kind) for o in summary.outcomes] == [
        ("accepted_best", None), ("failed", "constraint")]
    assert "return 4" in git(repo, "show", "ratchet/calc:deep/er/calc/calc.py")
    assert git(repo, "status", "--porcelain", "--untracked-files=no").strip() == ""
