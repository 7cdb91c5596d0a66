"""Start-up of `ratchet run`: process start to the first proposal request, seed already measured.

Issue "a loop that costs nothing": at most 1.0 s from starting `ratchet run <exp> --model M
--loop 1` to the model's first request once the seed baseline is on record. The model here
is a fake OpenAI-compatible server in this process (tests/fakeservers.py) that notes when the
first request arrives; its reply has no code, so the iteration ends as a cheap extraction
failure and the state stays the same from run to run. The real path is measured, SDK import
and all: `openai-compatible:fake@<url>` goes through the openai package like any API model.

BEFORE (a `git worktree` of an older commit, imported through PYTHONPATH) and AFTER (this
checkout) each get their own copy of experiments/fib in a fresh git repo, with a seed
measured once by their own code; then runs alternate between the two.

    python benchmarks/bench_run_startup.py [--runs 7] [--before b7fe41e | --before-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_startup import before_tree, check_import_source  # noqa: E402
from fakeservers import FakeModelServer, Reply  # noqa: E402

TARGET = 1.0  # seconds to the first proposal request
ENTRY = "import sys; from ratchetloop.cli import main; main(sys.argv[1:], prog_name='ratchet')"
STATE = ("SCORES.json", "SCORES.md", "MEMORY.json", "MEMORY.md", "runs", "winners",
         "__pycache__", ".ratchet.lock", ".ratchet.lock.holder")
# As tests/conftest.py: a seed measurement of a second or two, not a real one.
SMALL_ACCEPTANCE = {"min_effect": 0.02, "confidence": 0.9, "min_rounds": 6, "max_rounds": 6,
                    "batch_rounds": 6, "max_seconds": 5}
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]


class TimedServer(FakeModelServer):
    """Notes when the first reply is asked for (the first request), and how much CPU the
    `ratchet` process (`pid`) and the children it reaped had used by then: CPU time barely
    moves when other work shares the machine, wall time does."""

    first: float | None = None
    first_cpu: float | None = None
    pid: int | None = None

    def _next(self) -> Reply:
        if self.first is None:
            self.first = time.perf_counter()
            if self.pid is not None:
                self.first_cpu = cpu_seconds(self.pid)
        return super()._next()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of `pid` from /proc (None where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def make_repo(tree: Path, where: Path) -> Path:
    """experiments/fib of `tree` in a new one-commit git repo; returns the experiment folder."""
    folder = where / "experiments" / "fib"
    shutil.copytree(tree / "experiments" / "fib", folder, ignore=shutil.ignore_patterns(*STATE))
    contract = folder / "experiment.json"
    data = json.loads(contract.read_text(encoding="utf-8"))
    data["acceptance"] = SMALL_ACCEPTANCE
    contract.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "initial"]):
        subprocess.run([*GIT, *cmd], cwd=where, check=True)
    return folder


def first_request(src: Path, folder: Path,
                  env: dict[str, str]) -> tuple[float, float | None, float, str]:
    """Run `ratchet run fib --model <fake> --loop 1`: (seconds from process start to the
    first request, CPU seconds used by then, process wall seconds, output)."""
    with TimedServer(default_text="no code in this reply") as server:
        model = f"openai-compatible:fake@{server.openai_base_url}"
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", ENTRY, "run", str(folder), "--model",
                                 model, "--loop", "1"], cwd=folder,
                                env={**env, "PYTHONPATH": str(src)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        server.pid = proc.pid
        out, _ = proc.communicate(timeout=300)
        wall = time.perf_counter() - start
        if proc.returncode != 0 or server.first is None:
            raise SystemExit(f"run failed (exit {proc.returncode}, request seen:"
                             f" {server.first}):\n{out}")
        return server.first - start, server.first_cpu, wall, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per side")
    ap.add_argument("--before", default="b7fe41e", help="commit to compare against")
    ap.add_argument("--before-src", default=None, help="an existing src/ folder instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ratchet-run-startup-") as tmp, \
            before_tree(args.before, args.before_src) as before:
        sides = {"before": before, "after": ROOT / "src"}
        env = {**os.environ, "RATCHET_BENCH_LOCK": str(Path(tmp) / "bench.lock")}
        folders: dict[str, Path] = {}
        for side, src in sides.items():
            check_import_source(src)
            folders[side] = make_repo(src.parent, Path(tmp) / side)
            first_request(src, folders[side], env)  # measures the seed; warms the caches
            scores = json.loads((folders[side] / "SCORES.json").read_text(encoding="utf-8"))
            if not scores.get("seed"):
                raise SystemExit(f"{side}: no seed on record after the first run")
        latency: dict[str, list[float]] = {side: [] for side in sides}
        cpu: dict[str, list[float]] = {side: [] for side in sides}
        walls: dict[str, list[float]] = {side: [] for side in sides}
        hogs: dict[str, int] = dict.fromkeys(sides, 0)  # runs that printed the hog sample
        for i in range(args.runs):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for side in order:
                first, used, wall, out = first_request(sides[side], folders[side], env)
                latency[side].append(first)
                cpu[side].append(used if used is not None else float("nan"))
                walls[side].append(wall)
                hogs[side] += "other processes using CPU" in out
    print(f"{args.runs} runs per side, interleaved; load average {os.getloadavg()[0]:.2f}"
          f" on {os.cpu_count()} CPUs; seed already measured; model: fake OpenAI-compatible"
          " server (openai SDK)")
    print(f"before = {args.before_src or args.before}, after = this checkout;"
          f" target <= {TARGET} s to the first proposal request")
    head = (f"{'side':<7} {'median s':>9} {'min s':>7} {'max s':>7} {'cpu s':>6} "
            f"{'process wall s':>15} {'meets':>6}")
    print(head)
    print("-" * len(head))
    for side in sides:
        med = statistics.median(latency[side])
        print(f"{side:<7} {med:>9.3f} {min(latency[side]):>7.3f} {max(latency[side]):>7.3f}"
              f" {statistics.median(cpu[side]):>6.2f} {statistics.median(walls[side]):>15.3f}"
              f" {'yes' if med <= TARGET else 'NO':>6}")
    ratio = statistics.median(latency["after"]) / statistics.median(latency["before"])
    print(f"after/before (median to first request): {ratio:.2f}; cpu s: CPU the ratchet"
          " process (and children it reaped) had used when the request arrived (median)")
    print("runs whose output has the CPU-hog warning (sampled in the background after):"
          + "".join(f" {side} {hogs[side]}/{args.runs}" for side in sides))


if __name__ == "__main__":
    main()
