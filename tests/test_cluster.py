"""`--ray`: evaluations on the bench nodes of a real multi-node Ray cluster.

One cluster for the module, made with Ray's own test cluster (`ray.cluster_utils.Cluster`):
a head without a bench resource and two worker nodes with `{"bench": 1}`, every node on
127.0.0.1, Ray's files in a private temp dir (RAY_TMPDIR), so this cluster is the only
one the tests see, start and stop. The nodes' environment holds fake API keys: a
candidate that hunts for them on a node must find nothing. Real evaluations of the fib
experiment run through `RayEvaluator` and through `ratchet run --ray`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ITERATIVE, NAIVE, RATCHET, git, make_exp_repo, reply, run_ratchet, write_replay

from ratchetloop import cluster, doctor, evaluate, experiment
from ratchetloop.api import Loop, run_experiment
from ratchetloop.cli import main
from ratchetloop.cluster import RayEvaluator
from ratchetloop.errors import RatchetError
from ratchetloop.status import TimingProgress

FAKE_KEYS = {"OPENAI_API_KEY": "sk-node-secret-0123456789", "ANTHROPIC_API_KEY":
             "sk-ant-node-secret-9876543210"}
MEMO = ("def fib(n, _cache={0: 0, 1: 1}):\n    if n not in _cache:\n"
        "        _cache[n] = fib(n - 1) + fib(n - 2)\n    return _cache[n]\n")
FORGED = json.dumps({"ok": True, "phase": "done", "unit": "us", "rounds": 6, "samples": {
    "fib22": {"candidate": [0.001] * 6, "best": [100.0] * 6}}})
FORGER = ("import os\nfor fd in range(3, 256):\n    try:\n"
          f"        os.write(fd, ({FORGED!r} + '\\n').encode())\n"
          "    except OSError:\n        pass\n" + ITERATIVE)
SLOW = "import time\ntime.sleep(3)  # slow enough to be caught running\n"
# Reports everything it can see of the node's secrets in its failure message.
KEY_HUNTER = """import os
from pathlib import Path
seen = dict(os.environ)
for d in Path("/proc").iterdir():
    if d.name.isdigit():
        try:
            seen[d.name] = (d / "environ").read_bytes().decode(errors="replace")
        except OSError:
            pass
raise RuntimeError("HUNTED " + repr(seen))
""" + ITERATIVE


class Ray:
    """The module's cluster: its address, the bench nodes, and the Cluster to stop."""

    def __init__(self, made: Any, bench: list[Any]) -> None:
        self.made, self.bench, self.address = made, bench, made.address


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Ray]:
    import ray
    from ray.cluster_utils import Cluster

    # Ray's files, its address file and unix sockets (108 bytes at most: a short path)
    temp = tempfile.mkdtemp(prefix="rl-ray-")
    env = {"RAY_TMPDIR": temp, "RATCHET_BENCH_LOCK": os.path.join(temp, "bench.lock"),
           **FAKE_KEYS}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the nodes' environment (they inherit ours)
    made = Cluster(shutdown_at_exit=False)
    try:
        made.add_node(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
        bench = [made.add_node(num_cpus=1, resources={"bench": 1}, node_ip_address="127.0.0.1")
                 for _ in range(2)]
        made.wait_for_nodes()
        for key in FAKE_KEYS:  # the driver's own keys are not the nodes' business
            os.environ.pop(key)
        yield Ray(made, bench)
    finally:
        ray.shutdown()
        made.shutdown()  # this cluster's processes only
        cluster.sweep(Path(tempfile.gettempdir()))  # the killed nodes' task folders
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def evaluator(ray_cluster: Ray) -> Iterator[RayEvaluator]:
    ev = RayEvaluator(ray_cluster.address)
    yield ev
    ev.close()


@pytest.fixture(scope="module")
def fib_exp(tmp_path_factory: pytest.TempPathFactory) -> experiment.Experiment:
    return experiment.load(make_exp_repo(tmp_path_factory.mktemp("fib"), "fib",
                                         cases=["fib22"]))


def bench_ids(ray_cluster: Ray) -> set[str]:
    return {node.node_id for node in ray_cluster.bench}


# --------------------------------------------------------------------------- the bundle


def test_the_bundle_holds_what_a_work_dir_gets(tmp_path: Path) -> None:
    exp = experiment.load(make_exp_repo(tmp_path, "fib"))
    for state in ("SCORES.json", "MEMORY.md", ".ratchet.lock", "runs/0001/reply.md",
                  "winners/abc/candidate.py", "data/__pycache__/x.pyc", "data/input.txt"):
        (exp.root / state).parent.mkdir(parents=True, exist_ok=True)
        (exp.root / state).write_text("x")
    staged = evaluate.stage_workdir(exp, tmp_path)
    cluster.unpack(cluster.pack(exp), tmp_path / "unpacked")

    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    assert listing(tmp_path / "unpacked") == listing(staged)
    assert "data/input.txt" in listing(staged) and "SCORES.json" not in listing(staged)


def test_a_bundle_with_a_link_or_a_path_out_is_refused(tmp_path: Path) -> None:
    for name, kind in (("link", tarfile.SYMTYPE), ("../out.txt", tarfile.REGTYPE)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd"
            tar.addfile(info, io.BytesIO(b""))
        with pytest.raises(RatchetError, match="refused member"):
            cluster.unpack(buffer.getvalue(), tmp_path / "dest")
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "dest" / "link").exists()


# --------------------------------------------------------------------------- evaluations


def test_slots_are_the_live_bench_nodes(ray_cluster: Ray, evaluator: RayEvaluator) -> None:
    import ray

    assert evaluator.slots == 2  # the head (no bench resource) is not a benchmark host
    nodes = ray.nodes()
    unmarked = [dict(n, Resources={k: v for k, v in n["Resources"].items() if k != "bench"})
                for n in nodes]
    dead = [dict(n, Alive=False) for n in nodes]
    assert cluster.bench_slots(unmarked) == 0 and cluster.bench_slots(dead) == 0


def test_a_candidate_is_timed_with_its_reference_on_one_bench_node_from_the_object_store(
        ray_cluster: Ray, evaluator: RayEvaluator, tmp_path: Path) -> None:
    repo = make_exp_repo(tmp_path, "fib", cases=["fib18", "fib22"]).parents[1]
    exp = experiment.load(repo / "experiments" / "fib")
    (exp.root / "SCORES.json").write_text("{}")  # state stays on the driver
    harness = exp.path("eval.py")  # a harness that keeps a log: it comes back to runs/<n>/
    harness.write_text("import os\nfrom pathlib import Path\nPath('node.log').write_text("
                       "'state: ' + repr(sorted(os.listdir('.'))))\n" + harness.read_text())
    heard: list[TimingProgress] = []
    first = evaluator.run(exp, MEMO, {"best": NAIVE}, seed=1, keep_workdir=tmp_path / "run1",
                          progress=heard.append)
    assert first.ok, first.failure
    assert heard and heard[-1].rounds == first.rounds  # the node's progress lines, relayed
    assert set(first.samples) == {"fib18", "fib22"}
    for by_impl in first.samples.values():
        assert set(by_impl) == {"candidate", "best"}
        assert all(len(v) == first.rounds >= 3 for v in by_impl.values())
    node = first.info["node"]
    log = (tmp_path / "run1" / "node.log").read_text()
    assert "eval.py" in log and "SCORES.json" not in log
    assert node["id"] in bench_ids(ray_cluster)
    assert not node["root"].startswith(str(repo))  # its own copy, in a temp dir of its own
    # The folder is gone here: a node that read it through a shared filesystem would fail.
    # Two evaluations at once, from two threads (as the loop's scheduler calls run()):
    # one on each bench slot.
    shutil.move(repo, tmp_path / "moved")
    results: list[Any] = [None, None]

    def one(i: int) -> None:
        results[i] = evaluator.run(exp, ITERATIVE, {"best": MEMO}, seed=10 + i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r.ok for r in results), results
    assert {r.info["node"]["id"] for r in results} == bench_ids(ray_cluster)


def test_a_forger_is_caught_on_the_node(evaluator: RayEvaluator,
                                        fib_exp: experiment.Experiment) -> None:
    result = evaluator.run(fib_exp, FORGER, {"best": MEMO}, seed=3)
    assert not result.ok and result.failure is not None
    assert result.failure.kind == "integrity", result.failure
    assert [0.001] * 6 not in [s.get("candidate") for s in result.samples.values()]


def test_the_nodes_keys_never_reach_a_candidate(evaluator: RayEvaluator,
                                                fib_exp: experiment.Experiment) -> None:
    result = evaluator.run(fib_exp, KEY_HUNTER, {"best": MEMO}, seed=4)
    assert not result.ok and result.failure is not None
    text = result.model_dump_json()
    assert "HUNTED" in text  # the hunter ran on the node and reported what it saw
    for secret in FAKE_KEYS.values():
        assert secret not in text


def test_an_error_on_the_node_is_one_clear_error(evaluator: RayEvaluator,
                                                 fib_exp: experiment.Experiment) -> None:
    bad: Any = {"best": 123}  # a reference that is not source: run_eval raises on the node
    with pytest.raises(RatchetError, match=r"an evaluation failed on a bench node of .*"
                                           r": TypeError: .*same ratchetloop"):
        evaluator.run(fib_exp, ITERATIVE, bad, seed=7)


# --------------------------------------------------------------------------- CLI


def test_doctor_lists_the_nodes_and_their_bench_slots(ray_cluster: Ray) -> None:
    rows = doctor.ray_rows(ray_cluster.address)
    assert rows[0] == ("ray cluster", "ok", f"{ray_cluster.address}: 3 live nodes, 2 bench"
                                            " slots")
    nodes = {row.check.removeprefix("ray node "): row for row in rows[1:]}
    for node in ray_cluster.bench:
        row = nodes[node.node_id[:12]]
        assert row.status == "ok" and row.detail.startswith("127.0.0.1 (")
        assert row.detail.endswith(", alive, 1 CPUs, 1 bench slot")
    assert sum(r.detail.endswith(", 0 bench slots") for r in rows) == 1  # the head
    result = CliRunner().invoke(main, ["doctor", "--ray", ray_cluster.address])
    assert result.exit_code == 0, result.output
    assert result.output.count("ray node") == 3


def tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # not a process, or gone
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def running_eval(node: Any) -> bool:
    """Is eval.py running under this node's raylet (the node's worker started it), with
    a SLOW candidate in its work dir?"""
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    for pid in tree(raylet):
        try:
            if b"eval.py" in Path(f"/proc/{pid}/cmdline").read_bytes() and \
                    SLOW in Path(f"/proc/{pid}/cwd/candidate.py").read_text():
                return True
        except OSError:
            pass
    return False


def node_running_eval(ray_cluster: Ray, timeout: float = 60) -> Any:
    """The bench node evaluating the SLOW candidate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in ray_cluster.bench:
            if running_eval(node):
                return node
        time.sleep(0.02)
    raise AssertionError("no bench node started the evaluation")




def test_ratchet_run_with_ray_survives_a_node_dying_mid_evaluation(ray_cluster: Ray,
                                                                   tmp_path: Path) -> None:
    """`ratchet run --ray --loop 2`; the bench node timing attempt 1 is killed while it
    does: the evaluation is run again on the other node, each attempt is recorded once."""
    folder = make_exp_repo(tmp_path, "fib", cases=["fib22"])
    model = write_replay(tmp_path / "replay.json", [reply(SLOW + MEMO, "memo"),
                                                    reply(ITERATIVE, "iterative")])
    run = subprocess.Popen(  # --ray without a value: the cluster in $RAY_ADDRESS
        [RATCHET, "run", str(folder), "--model", model, "--loop", "2", "--ray"], cwd=folder,
        env={**os.environ, "RAY_ADDRESS": ray_cluster.address}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        doomed = node_running_eval(ray_cluster)  # the sandbox has started eval.py there
        ray_cluster.made.remove_node(doomed)
        ray_cluster.bench.remove(doomed)
        out, err = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, out[-3000:] + err[-3000:]
    attempts = [json.loads(p.read_text()) for p in
                sorted((folder / "runs").glob("[0-9]*/attempt.json"))]
    assert [a["status"] for a in attempts] == ["accepted_best", "rejected"], attempts
    assert json.loads((folder / "SCORES.json").read_text())["last_iteration"] == 2
    for n in (1, 2):  # both timed on the node that is left
        result = json.loads((folder / "runs" / f"{n:04d}" / "result.json").read_text())
        assert result["info"]["node"]["id"] == ray_cluster.bench[0].node_id != doomed.node_id
    # the killed task's copy of the folder was swept by a later task (its pid is gone)
    left = [d.name for d in Path(tempfile.gettempdir()).glob(f"{cluster.TEMP_PREFIX}*-*")]
    assert not [n for n in left if not Path(f"/proc/{n.split('-')[2]}").exists()], left


def test_the_python_api_runs_an_experiment_on_the_cluster(ray_cluster: Ray,
                                                          tmp_path: Path) -> None:
    folder = make_exp_repo(tmp_path, "fib", cases=["fib22"])
    model = write_replay(tmp_path / "replay.json", [reply(MEMO, "memo")])
    summary = run_experiment(folder, model, 1, ray=ray_cluster.address)
    assert [o.status for o in summary.outcomes] == ["accepted_best"]
    result = json.loads((folder / "runs" / "0001" / "result.json").read_text())
    assert result["info"]["node"]["id"] in bench_ids(ray_cluster)


def test_a_dead_address_is_one_line_in_seconds_and_nothing_is_recorded(tmp_path: Path) -> None:
    folder = make_exp_repo(tmp_path, "fib", cases=["fib22"])
    proc = run_ratchet("run", str(folder), "--loop", "1", "--ray", "127.0.0.1:1", cwd=folder,
                       timeout=60)  # ray.init alone retries a dead address for minutes
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot connect to the Ray cluster at 127.0.0.1:1: nothing answers" in proc.stderr
    assert "Traceback" not in proc.stderr and not (folder / "runs").exists()


def test_without_ray_installed_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RatchetError, match=r"--ray needs Ray: pip install 'ratchetloop\[ray\]'"):
        RayEvaluator("auto")
    assert doctor.ray_rows("auto")[0].status == "missing"


def test_generic_mode_refuses_ray(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    (repo / "knob.txt").write_text("1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    with pytest.raises(RatchetError, match="experiment folders only"):
        Loop(target=str(repo / "knob.txt"), metric="cat knob.txt", repo=repo,
             proposer=write_replay(tmp_path / "replay.json", [])).run(1, ray="auto")


# --------------------------------------------------------------------------- the last node


def test_losing_the_last_bench_node_is_one_clear_error(ray_cluster: Ray,
                                                       evaluator: RayEvaluator,
                                                       fib_exp: experiment.Experiment) -> None:
    slow = SLOW + MEMO
    errors: list[BaseException] = []

    def run() -> None:
        try:
            evaluator.run(fib_exp, slow, {"best": NAIVE}, seed=6)
        except RatchetError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    last = node_running_eval(ray_cluster)
    ray_cluster.made.remove_node(last)
    ray_cluster.bench.remove(last)
    worker.join(timeout=120)
    assert len(errors) == 1 and "no live node with a `bench` resource" in str(errors[0])
    with pytest.raises(RatchetError, match=r"no node with a `bench` resource: start each"):
        RayEvaluator(ray_cluster.address)
