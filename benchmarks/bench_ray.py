"""What `--ray` costs per evaluation: the same fib evaluations on this host
(`LocalEvaluator`) and through a local multi-node Ray cluster (`RayEvaluator`), interleaved,
side by side in one run.

The cluster is Ray's own test cluster, as in tests/test_cluster.py: a head without a
bench resource and two bench nodes, all on 127.0.0.1, Ray's files in a private temp dir.
All its nodes are this host, so they share the host-wide benchmark lock: this measures the
overhead of going through Ray (object store, task, a fresh copy of the folder on the
node, the reply), not the throughput of several benchmark hosts.

    .venv/bin/python benchmarks/bench_ray.py [--evals 8] [--experiment fib]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MEMO = ("def fib(n, _cache={0: 0, 1: 1}):\n    if n not in _cache:\n"
        "        _cache[n] = fib(n - 1) + fib(n - 2)\n    return _cache[n]\n")
ITERATIVE = ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
             "    return a\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=8, help="evaluations per evaluator")
    args = parser.parse_args()
    temp = tempfile.mkdtemp(prefix="rl-ray-")  # short: Ray's unix sockets live under it
    os.environ.update({"RAY_TMPDIR": temp, "RATCHET_BENCH_LOCK": f"{temp}/bench.lock"})
    from conftest import make_exp_repo
    from ray.cluster_utils import Cluster

    from ratchetloop import cluster, experiment
    from ratchetloop.workspace import LocalEvaluator

    made = Cluster(shutdown_at_exit=False)
    try:
        started = time.perf_counter()
        made.add_node(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
        for _ in range(2):
            made.add_node(num_cpus=1, resources={"bench": 1}, node_ip_address="127.0.0.1")
        made.wait_for_nodes()
        print(f"cluster of 3 nodes up in {time.perf_counter() - started:.1f} s")
        exp = experiment.load(make_exp_repo(Path(temp) / "exp", "fib", cases=["fib22"]))
        print(f"bundle: {len(cluster.pack(exp)) / 1024:.1f} KiB")
        started = time.perf_counter()
        remote = cluster.RayEvaluator(made.address)
        print(f"RayEvaluator connected in {time.perf_counter() - started:.2f} s,"
              f" {remote.slots} bench slots")
        remote.run(exp, ITERATIVE, {"best": MEMO}, seed=0)  # workers started, bundle put
        local = LocalEvaluator()
        times: dict[str, list[float]] = {"local": [], "ray": []}
        for i in range(args.evals):
            for name, ev in (("local", local), ("ray", remote))[:: 1 if i % 2 else -1]:
                started = time.perf_counter()
                result = ev.run(exp, ITERATIVE, {"best": MEMO}, seed=i + 1)
                times[name].append(time.perf_counter() - started)
                assert result.ok, result.failure
        remote.close()
        loc, ray_ = statistics.median(times["local"]), statistics.median(times["ray"])
        print(f"median wall per evaluation over {args.evals}: local {loc:.3f} s,"
              f" ray {ray_:.3f} s, ratio ray/local {ray_ / loc:.3f}"
              f" (+{(ray_ - loc) * 1000:.0f} ms)")
    finally:
        made.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
