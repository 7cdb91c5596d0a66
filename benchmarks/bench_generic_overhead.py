"""What generic mode adds per iteration, beyond the proposer and the user's metric command.

A temp git repo holds value.txt (the editable file) and a metric command that prints it;
scripted replies lower the value, so every iteration is accepted (the most expensive path:
worktrees, 6 command runs, a commit on ratchet/<tag>, SCORES/MEMORY/results.tsv). Reported:

  loop overhead / iteration = wall - proposer - time inside metric runs
  sandbox cost / run        = median sandbox.run (and sandbox.Warm().run) wall - median
                              plain subprocess wall, interleaved

    .venv/bin/python benchmarks/bench_generic_overhead.py [iterations]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ratchetloop import experiment as experiment_mod
from ratchetloop import sandbox
from ratchetloop.generic import session_parts
from ratchetloop.generic.contract import MetricSpec
from ratchetloop.generic.init import init_project
from ratchetloop.loop import Options, QuietReporter, run_loop
from ratchetloop.proposers.replay import ReplayProposer

COMMAND = "cat value.txt"


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "value.txt").write_text("1000\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return repo


def plain_vs_sandbox(cwd: Path, n: int = 15) -> tuple[float, float, float]:
    """Medians of interleaved runs: plain subprocess, sandbox.run, sandbox.Warm().run."""
    plain, boxed, warm = [], [], []
    with sandbox.Warm() as box:
        box.run(["/bin/sh", "-c", COMMAND], cwd=cwd, timeout=30)  # start the zygote
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(["/bin/sh", "-c", COMMAND], cwd=cwd, capture_output=True)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            sandbox.run(["/bin/sh", "-c", COMMAND], cwd=cwd, timeout=30)
            boxed.append(time.perf_counter() - t)
            t = time.perf_counter()
            box.run(["/bin/sh", "-c", COMMAND], cwd=cwd, timeout=30)
            warm.append(time.perf_counter() - t)
    return statistics.median(plain), statistics.median(boxed), statistics.median(warm)


def main(iterations: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RATCHET_BENCH_LOCK"] = str(Path(tmp) / "bench.lock")
        repo = make_repo(Path(tmp))
        folder = init_project(repo, tag="bench", editable=["value.txt"], run_command=COMMAND,
                              metric=MetricSpec())
        exp = experiment_mod.load(folder)
        replies = [f"File: value.txt\n```\n{900 - 10 * i}\n```\nNote: lower to {900 - 10 * i}\n"
                   for i in range(iterations)]
        reporter, workspace = session_parts(exp, QuietReporter())
        assert workspace is not None
        run_loop(exp, ReplayProposer(replies), Options(iterations=1, drift_every=0), reporter,
                 workspace)  # warm-up: seed measurement and first worktree checkouts
        workspace.metric_seconds = 0.0
        start = time.perf_counter()
        summary = run_loop(exp, ReplayProposer(replies[1:]),
                           Options(iterations=iterations - 1, drift_every=0), reporter, workspace)
        wall = time.perf_counter() - start
        n = len(summary.outcomes)
        propose = sum(o.seconds.get("propose", 0.0) for o in summary.outcomes)
        statuses = {o.status for o in summary.outcomes}
        plain, boxed, warm = plain_vs_sandbox(workspace.trees.pristine)
        runs_per_iteration = 6  # 3 rounds x (candidate, incumbent): a constant metric
        overhead = (wall - propose - workspace.metric_seconds) / n
        print(f"generic-mode overhead over {n} accepted iterations ({statuses}):")
        print(f"  wall per iteration            {1000 * wall / n:8.1f} ms")
        print(f"  proposer per iteration        {1000 * propose / n:8.1f} ms (scripted)")
        print(f"  metric runs per iteration     {1000 * workspace.metric_seconds / n:8.1f} ms"
              f" ({runs_per_iteration} sandboxed runs of `{COMMAND}`)")
        print(f"  loop overhead per iteration   {1000 * overhead:8.1f} ms"
              " (prompt, edits, worktrees, stats, commit, state files)")
        print(f"  per command run: plain {1000 * plain:.1f} ms, sandboxed {1000 * boxed:.1f} ms"
              f" -> sandbox adds {1000 * (boxed - plain):.1f} ms; warm sandbox"
              f" {1000 * warm:.1f} ms -> adds {1000 * (warm - plain):.1f} ms")
        print("  (the whole per-run path, worktree included: benchmarks/bench_sandbox_cost.py)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 11)
