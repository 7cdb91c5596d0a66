"""What the sandbox costs per command run in generic mode, over a plain subprocess.

The issue's budget: at most 15 ms per run over a plain subprocess of the same command.
One temp git repo holds a small project (an editable file, a read-only script, a few dozen
other files); generic mode's Worktrees exports it once. Then, interleaved round by round
(random order per round, so drift hits every variant alike), N runs each of:

  plain      subprocess.run(["/bin/sh", "-c", CMD]) in a prepared copy of the tree
  run        sandbox.run as generic mode calls it (result channel, readonly_inside,
             no artefacts) in that same copy
  path       generic mode's whole per-run path: trees.fresh + sandbox.run +
             trees.changed_readonly + trees.discard
  warm       (when the sandbox offers `Warm`) the same call on a warm sandbox, same copy
  warm-path  the whole per-run path with the warm sandbox

Printed: the median wall of each, its overhead over plain in ms, and the ratio.

    .venv/bin/python benchmarks/bench_sandbox_cost.py [runs] [files in the tree]
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ratchetloop import sandbox
from ratchetloop.generic.worktree import Worktrees

CMD = "cat value.txt; cat score.sh > /dev/null"
READONLY = ["score.sh"]
BUDGET_MS = 15.0


def make_repo(root: Path, files: int = 40) -> Path:
    """A small committed project: value.txt (editable), score.sh (read-only), filler."""
    repo = root / "repo"
    (repo / "src" / "pkg").mkdir(parents=True)
    (repo / "value.txt").write_text("1000\n")
    (repo / "score.sh").write_text("#!/bin/sh\ncat value.txt\n")
    for i in range(files):
        sub = repo / ("src/pkg" if i % 2 else "src")
        (sub / f"mod{i}.py").write_text(f"# filler {i}\n" + "x = 1\n" * 50)
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return repo


def main(n: int, files_in_tree: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), files_in_tree)
        trees = Worktrees(repo, "bench", Path(tmp))
        trees.prepare(["value.txt"], READONLY)
        files = {"value.txt": "900\n"}
        kwargs = {"timeout": 30.0, "result_channel": True, "artefacts": (),
                  "readonly_inside": READONLY}
        fixed = trees.fresh("fixed", files)  # the copy `plain`, `run` and `warm` use

        def plain() -> None:
            subprocess.run(["/bin/sh", "-c", CMD], cwd=fixed, capture_output=True, check=True)

        def boxed(runner: Callable[..., sandbox.SandboxResult], cwd: Path) -> None:
            res = runner(["/bin/sh", "-c", CMD], cwd=cwd, **kwargs)
            if not res.ok or res.stdout.strip() != "900":
                raise SystemExit(f"sandboxed run failed: {res}")

        def path(runner: Callable[..., sandbox.SandboxResult]) -> None:
            cwd = trees.fresh("candidate", files)
            try:
                boxed(runner, cwd)
                if trees.changed_readonly(cwd):
                    raise SystemExit("read-only file changed")
            finally:
                trees.discard(cwd)

        variants: dict[str, Callable[[], None]] = {
            "plain": plain,
            "run": lambda: boxed(sandbox.run, fixed),
            "path": lambda: path(sandbox.run),
        }
        warm_cls = getattr(sandbox, "Warm", None)
        warm = warm_cls() if warm_cls is not None else None
        if warm is not None:
            variants["warm"] = lambda: boxed(warm.run, fixed)
            variants["warm-path"] = lambda: path(warm.run)
        try:
            times: dict[str, list[float]] = {k: [] for k in variants}
            for fn in variants.values():  # warm-up: probes, caches, first cgroups
                fn()
            rng = random.Random(1)
            for _ in range(n):
                order = list(variants)
                rng.shuffle(order)
                for name in order:
                    t = time.perf_counter()
                    variants[name]()
                    times[name].append(time.perf_counter() - t)
        finally:
            if warm is not None:
                warm.close()
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        base = med["plain"]
        print(f"per command run, median of {n} interleaved runs each, `{CMD}`, a tree of"
              f" {files_in_tree + 2} files ({os.cpu_count()} cores, uid {os.geteuid()}):")
        for name, ms in med.items():
            q = sorted(times[name])
            p90 = 1000 * q[int(0.9 * (len(q) - 1))]
            extra = "" if name == "plain" else (
                f"  overhead {ms - base:7.1f} ms  ratio {ms / base:5.2f}x")
            print(f"  {name:10s} {ms:7.1f} ms (p90 {p90:6.1f}){extra}")
        best = min((k for k in med if k.endswith("path")), key=med.__getitem__)
        verdict = "within" if med[best] - base <= BUDGET_MS else "OVER"
        print(f"  generic per-run path ({best}) costs {med[best] - base:.1f} ms over plain:"
              f" {verdict} the {BUDGET_MS:.0f} ms budget")
        layers = sandbox.run(["true"], cwd=fixed, timeout=10).layers
        print(f"  layers: {', '.join(layers)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30,
         int(sys.argv[2]) if len(sys.argv) > 2 else 40)
