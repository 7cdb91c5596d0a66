"""--parallel K: attempts and accepted iterations per hour, by model latency; and A/A.

Every cell is a real `run_loop` on a copy of a shipped experiment (its own contract and
acceptance rule, as shipped) in a throwaway git repo whose seed was measured once per
experiment, so cells differ only in K and latency. The model is tests/fakeservers.py's
FakeModelServer on 127.0.0.1, reached through the official `openai` SDK
(`openai-compatible:fake@...`); each reply takes `latency` seconds. Its script is the same
for every cell of an experiment, so every K sees the same candidates in the same order:

  fib      a winner (a fib that burns k steps per call, k halving each time), a loser
           (4k steps: slower than the incumbent), a reply with no code, and again
  linear   template kernels (tuner knob combinations) and the seed with a comment
           changed (caught as a duplicate), with replies without code between them

A cell makes a fixed number of attempts (--attempts, default 8) and is timed from the
call to the summary (the seed is measured beforehand, once). Rows per K: "1 seq" is the
plain loop (no pipelining), "1" pipelines one request, K > 1 keeps K requests out.
Evaluations take the one benchmark slot of this host in turn (--ray: one per bench node),
so throughput grows with K until the slots are busy all the time: the bound printed is the
smaller of K/(latency + per-request overhead) and slots/(evaluation seconds per attempt),
attempts per second. --ray's nodes are both this host, each with a benchmark lock of its
own (as two hosts would have), so their timings overlap on shared cores here.

What a scripted model cannot show: a real model's next prompt under pipelining does not
know the results still in flight, so its proposals are worse informed; here the script
ignores the prompt, so "accepted per hour" is the mechanical ceiling, not the gain.

    .venv/bin/python benchmarks/bench_throughput.py --quick          # latency 0, 5 s
    .venv/bin/python benchmarks/bench_throughput.py                  # latency 0, 5, 20 s
    .venv/bin/python benchmarks/bench_throughput.py --experiments fib --ks 1,4 --latencies 5
    .venv/bin/python benchmarks/bench_throughput.py --ray            # + a 2-node Ray cluster
    .venv/bin/python benchmarks/bench_throughput.py --aa 30          # A/A only: K=1 vs K=4

--aa N: the A/A false-accept rate. Every proposal is the fib seed itself with its parameter
renamed (a different AST, so not a duplicate; the same cost), N attempts at K=1 (plain
loop) and N at K=4 (pipelined, requests taking --aa-latency seconds, so proposals come
back and are screened while another candidate is being timed), in one run,
interleaved in blocks so drift in the host's load hits both alike. Every accept is false.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from fakeservers import FakeModelServer  # noqa: E402

from ratchetloop import experiment as experiment_mod  # noqa: E402
from ratchetloop.loop import Options, run_loop  # noqa: E402
from ratchetloop.proposers import registry  # noqa: E402

STATE = ("runs", "winners", "SCORES.*", "MEMORY.*", "__pycache__", ".ratchet.lock*")


# --------------------------------------------------------------------------- scripts


def reply(source: str, note: str, lang: str) -> str:
    return f"Here you go.\n\n```{lang}\n{source.strip()}\n```\nNote: {note}\n"


def slow_fib(k: int) -> str:
    """A correct fib that burns k loop steps per call: halving k is a clear winner."""
    return (f"def fib(n):\n    for _ in range({k}):\n        pass\n    a, b = 0, 1\n"
            "    for _ in range(n):\n        a, b = b, a + b\n    return a\n")


def fib_script(n: int) -> list[str]:
    out: list[str] = []
    k = 32000
    while len(out) < n:
        out += [reply(slow_fib(k), f"burn {k} steps", "python"),
                reply(slow_fib(4 * k), f"burn {4 * k} steps", "python"),
                "I would rather think about it some more (no code)."]
        k //= 2
    return out[:n]


def linear_script(n: int) -> list[str]:
    loaded = importlib.util.spec_from_file_location(
        "linear_template", ROOT / "experiments" / "linear" / "template.py")
    assert loaded and loaded.loader
    template = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(template)
    combos = template.combinations()
    naive = (ROOT / "experiments" / "linear" / "naive.c").read_text()
    picks = [combos[i * len(combos) // 7] for i in range(7)]
    out: list[str] = []
    for i, knobs in enumerate(picks):
        out.append(reply(template.render(knobs), "tiled: " + json.dumps(knobs), "c"))
        out.append(reply(naive.replace("// out[B*T", f"// variant {i}: out[B*T"),
                         f"the seed again, variant {i}", "c") if i % 2 else
                   "I would rather think about it some more (no code).")
    return (out * (n // len(out) + 1))[:n]


def aa_fib(i: int) -> str:
    """The fib seed with its parameter renamed: another AST (not a duplicate), same cost."""
    v = f"n{i}"
    return (f"def fib({v}):\n    if {v} < 2:\n        return {v}\n"
            f"    return fib({v} - 1) + fib({v} - 2)\n")


# --------------------------------------------------------------------------- cells


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com",
                    *args], cwd=repo, check=True, capture_output=True)


def seeded_template(name: str, work: Path) -> Path:
    """experiments/<name> in a fresh git repo, its seed measured (SCORES.json): the repo."""
    repo = work / f"{name}-template"
    folder = repo / "experiments" / name
    shutil.copytree(ROOT / "experiments" / name, folder,
                    ignore=shutil.ignore_patterns(*STATE))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    exp = experiment_mod.load(folder)
    with FakeModelServer() as srv:  # never asked: zero attempts
        proposer = registry.resolve(f"openai-compatible:fake@{srv.openai_base_url}", exp)
        run_loop(exp, proposer, Options(iterations=0, drift_every=0))
    return repo


@dataclass
class Cell:
    experiment: str
    host: str
    latency: float
    k: str
    slots: int = 1  # evaluations at once: 1 per host, 1 per bench node of a Ray cluster
    attempts: int = 0
    wall: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    eval_seconds: float = 0.0  # summed over attempts: time the benchmark slot was busy
    propose_seconds: float = 0.0
    peak_requests: int = 0
    accepts: list[str] = field(default_factory=list)  # each accept's decision, one line

    @property
    def accepted(self) -> int:
        return sum(v for s, v in self.statuses.items() if s.startswith("accepted"))

    def per_hour(self, count: int) -> float:
        return 3600 * count / self.wall if self.wall else 0.0

    def bound(self, k: int, overhead: float) -> tuple[float, str]:
        """Attempts per hour the slower of the two stages allows, and which one it is."""
        propose = k / max(self.latency + overhead, 1e-3)
        evaluate = (self.slots * self.attempts / self.eval_seconds if self.eval_seconds
                    else math.inf)
        return 3600 * min(propose, evaluate), "requests" if propose < evaluate else "slot"


def run_cell(template: Path, work: Path, name: str, script: list[str], latency: float,
             k: str, attempts: int, ray: str | None = None, host: str = "1 host") -> Cell:
    repo = work / f"{name}-{host.replace(' ', '')}-{latency:g}s-k{k.replace(' ', '')}"
    shutil.copytree(template, repo, symlinks=True)
    exp = experiment_mod.load(repo / "experiments" / name)
    sequential = k.endswith("seq")
    parallel = int(k.split()[0])
    with FakeModelServer(script, default_text="no code this time", delay=latency) as srv:
        proposer = registry.resolve(f"openai-compatible:fake@{srv.openai_base_url}", exp)
        options = Options(iterations=attempts, parallel=parallel, pipeline=not sequential,
                          drift_every=0, ray=ray)
        start = time.monotonic()
        run_loop(exp, proposer, options)
        wall = time.monotonic() - start
        peak = srv.peak_in_flight
    cell = Cell(experiment=name, host=host, latency=latency, k=k, wall=wall, peak_requests=peak,
                slots=2 if ray else 1)
    for path in sorted((exp.root / "runs").glob("*/attempt.json")):
        data = json.loads(path.read_text())
        cell.attempts += 1
        cell.statuses[data["status"]] = cell.statuses.get(data["status"], 0) + 1
        cell.eval_seconds += data["seconds"].get("evaluate", 0.0)
        cell.propose_seconds += data["seconds"].get("propose", 0.0)
        if data["status"].startswith("accepted"):
            cell.accepts.append(decision_line(path.parent / "decision.json"))
    shutil.rmtree(repo, ignore_errors=True)
    return cell


def decision_line(path: Path) -> str:
    """What made the decision: overall and per case, ratio [CI] p rounds verdict."""
    d = json.loads(path.read_text())

    def one(c: dict[str, Any]) -> str:
        return (f"{c['verdict']} x{1 / c['ratio']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
                f" p={c['p_value']:.2g} n={c['rounds']} noise={100 * c['noise']:.1f}%")

    cases = "; ".join(f"{name}: {one(c)}" for name, c in d["per_case"].items())
    return f"overall {one(d['overall'])}; {cases}"


def print_table(cells: list[Cell]) -> None:
    print(f"\n{'experiment':<8} {'host':<8} {'latency':>7} {'K':>5} {'attempts':>8}"
          f" {'wall s':>7} {'att/h':>7} {'acc':>4} {'acc/h':>7} {'x att/h':>8}"
          f" {'eval s/att':>10} {'lat/K s':>8} {'bound att/h':>11} {'bound by':>9}"
          f" {'peak req':>8}  statuses")
    base: dict[tuple[str, str, float], float] = {}
    for c in cells:
        key = (c.experiment, c.host, c.latency)
        rate = c.per_hour(c.attempts)
        base.setdefault(key, rate)
        k = int(c.k.split()[0])
        overhead = max(0.0, c.propose_seconds / max(c.attempts, 1) - c.latency)
        bound, by = c.bound(k, overhead)
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(c.statuses.items()))
        print(f"{c.experiment:<8} {c.host:<8} {c.latency:>6g}s {c.k:>5} {c.attempts:>8}"
              f" {c.wall:>7.1f} {rate:>7.0f} {c.accepted:>4} {c.per_hour(c.accepted):>7.0f}"
              f" {rate / base[key]:>7.2f}x {c.eval_seconds / max(c.attempts, 1):>10.2f}"
              f" {c.latency / k:>8.2f} {bound:>11.0f} {by:>9} {c.peak_requests:>8}  {statuses}")


def saturation(cells: list[Cell]) -> None:
    """Where adding requests stops paying: the first K whose bound is the slot."""
    print("\nwhere it saturates (eval seconds per attempt vs latency/K):")
    groups: dict[tuple[str, str, float], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.experiment, c.host, c.latency), []).append(c)
    for (name, host, latency), group in groups.items():
        parallel = [c for c in group if not c.k.endswith("seq")]
        eval_per = statistics.median(c.eval_seconds / max(c.attempts, 1) for c in parallel)
        request = statistics.median(c.propose_seconds / max(c.attempts, 1) for c in parallel)
        slots = parallel[0].slots
        knee = max(1, math.ceil(request * slots / eval_per)) if eval_per > 0 else None
        best = max(parallel, key=lambda c: c.per_hour(c.attempts))
        print(f"  {name} on {host}, latency {latency:g}s: a request takes {request:.1f}s and"
              f" an evaluation holds one of {slots} slot(s) {eval_per:.1f}s per attempt, so"
              f" the slots are busy from K ~ {knee} on; the fastest cell was K={best.k}"
              f" ({best.per_hour(best.attempts):.0f} attempts/h)")


# --------------------------------------------------------------------------- A/A


def aa(template: Path, work: Path, n: int, latency: float, block: int) -> None:
    """False accepts with K=1 (plain loop) and K=4 (pipelined), interleaved in blocks."""
    counts = {"1 seq": [0, 0], "4": [0, 0]}  # attempts, accepts
    walls = {"1 seq": 0.0, "4": 0.0}
    done = 0
    while done < n:
        size = min(block, n - done)
        for k in counts:
            script = [reply(aa_fib(i), f"renamed the parameter (A/A {i})", "python")
                      for i in range(done + (0 if k == "4" else 100_000),
                                     done + size + (0 if k == "4" else 100_000))]
            cell = run_cell(template, work, "fib", script, latency if k == "4" else 0.0,
                            k, size, host=f"aa{done}")
            counts[k][0] += cell.attempts
            counts[k][1] += cell.accepted
            walls[k] += cell.wall
            print(f"  A/A block at {done}: K={k}: {cell.attempts} attempts,"
                  f" {cell.accepted} accepted ({dict(cell.statuses)})", flush=True)
            for line in cell.accepts:
                print(f"    false accept: {line}")
        done += size
    acc = experiment_mod.load(template / "experiments" / "fib").acceptance
    print(f"\nA/A on fib (every proposal is the seed with a renamed parameter: every accept"
          f" is false); acceptance as shipped: min_effect {acc.min_effect},"
          f" confidence {acc.confidence}; K=4 requests take {latency:g}s")
    print(f"{'K':>6} {'attempts':>9} {'false accepts':>14} {'rate':>7} {'95% upper':>10}"
          f" {'wall s':>7}")
    for k, (attempts, accepts) in counts.items():
        upper = clopper_pearson_upper(accepts, attempts)
        print(f"{k:>6} {attempts:>9} {accepts:>14} {accepts / max(attempts, 1):>7.1%}"
              f" {upper:>10.1%} {walls[k]:>7.0f}")


def clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


# --------------------------------------------------------------------------- main


def ray_cluster(work: Path) -> tuple[Any, str] | None:
    """A 2-node Ray test cluster on 127.0.0.1 with one bench slot per node, or None. Both
    nodes are this host: each gets a benchmark lock of its own (as two hosts would have),
    so their timings do overlap here, on shared cores."""
    try:
        from ray.cluster_utils import Cluster

        from ratchetloop import cluster as _cluster  # noqa: F401
    except ImportError as exc:
        print(f"(no Ray rows: {exc})")
        return None
    temp = tempfile.mkdtemp(prefix="rl-ray-")  # short: Ray's unix sockets live here
    os.environ["RAY_TMPDIR"] = temp  # the nodes inherit our environment when started
    cluster = Cluster(shutdown_at_exit=False)
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
    for i in range(2):
        os.environ["RATCHET_BENCH_LOCK"] = str(work / f"node{i}.lock")
        cluster.add_node(num_cpus=1, resources={"bench": 1}, node_ip_address="127.0.0.1")
    os.environ["RATCHET_BENCH_LOCK"] = str(work / "driver.lock")
    cluster.wait_for_nodes()
    return cluster, cluster.address


def stop_ray(cluster: Any) -> None:
    """This cluster's processes only (and the driver's connection to it)."""
    import ray

    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(os.environ.pop("RAY_TMPDIR", ""), ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", default="fib,linear")
    ap.add_argument("--latencies", default="0,5,20", help="seconds per reply")
    ap.add_argument("--ks", default="1seq,1,2,4,8", help="1seq: the plain loop")
    ap.add_argument("--attempts", type=int, default=8, help="attempts per cell")
    ap.add_argument("--quick", action="store_true", help="latencies 0 and 5 s only")
    ap.add_argument("--ray", action="store_true", help="also on a 2-node Ray test cluster")
    ap.add_argument("--aa", type=int, default=0, metavar="N",
                    help="only the A/A false-accept rate: N attempts at K=1 and at K=4")
    ap.add_argument("--aa-latency", type=float, default=0.5)
    ap.add_argument("--aa-block", type=int, default=10)
    args = ap.parse_args()
    latencies = [0.0, 5.0] if args.quick else [float(x) for x in args.latencies.split(",")]
    ks = [k.replace("seq", " seq") for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        work = Path(tmp)
        if args.aa:
            aa(seeded_template("fib", work), work, args.aa, args.aa_latency, args.aa_block)
            return
        lock = os.environ.get("RATCHET_BENCH_LOCK")
        cluster = ray_cluster(work) if args.ray else None
        cells: list[Cell] = []
        try:
            for name in args.experiments.split(","):
                template = seeded_template(name, work)
                script = (fib_script if name == "fib" else linear_script)(args.attempts)
                hosts: list[tuple[str, str | None]] = [("1 host", None)]
                if cluster is not None:
                    hosts.append(("ray 2", cluster[1]))
                for host, address in hosts:
                    for latency in latencies:
                        for k in ks:
                            cell = run_cell(template, work, name, script, latency, k,
                                            args.attempts, address, host)
                            cells.append(cell)
                            print(f"  {name} {host} latency {latency:g}s K={k}:"
                                  f" {cell.attempts} attempts in {cell.wall:.1f}s,"
                                  f" {cell.accepted} accepted", flush=True)
        finally:
            if cluster is not None:
                stop_ray(cluster[0])
                if lock is None:
                    os.environ.pop("RATCHET_BENCH_LOCK", None)
                else:
                    os.environ["RATCHET_BENCH_LOCK"] = lock
        print(f"\n{args.attempts} attempts per cell; att/h and acc/h: attempts and accepted"
              " iterations per hour of wall time; x att/h: against the first row of its group")
        print_table(cells)
        saturation(cells)


if __name__ == "__main__":
    main()
