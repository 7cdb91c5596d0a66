"""Prompt size over a long run: memory is capped, so the prompt must stay bounded.

Runs the real `linear` experiment in a throwaway git repo for N iterations with scripted
replies that mix what models actually send: compile errors (each with new names), security
violations, wrong results, replies without code, and real kernels (tuner renderings, some
winners, some not). Prints the prompt size per iteration in characters and estimated tokens
(characters / 4; the exact count depends on the model's tokenizer).

    python benchmarks/bench_prompt_size.py [--iterations 50]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ratchetloop import experiment as experiment_mod  # noqa: E402
from ratchetloop.experiment import import_file  # noqa: E402
from ratchetloop.loop import Options, run_loop  # noqa: E402
from ratchetloop.proposers.replay import ReplayProposer  # noqa: E402

SIGNATURE = ("void matmul_forward(float* out, const float* inp, const float* weight,"
             " const float* bias, int B, int T, int C, int OC)")


def replies(n: int, rng: random.Random) -> list[str]:
    naive = (ROOT / "experiments" / "linear" / "naive.c").read_text()
    template = import_file(ROOT / "experiments" / "linear" / "template.py", "bench_tpl")
    combos = template.combinations()
    rng.shuffle(combos)
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            body = f"{SIGNATURE} {{ out[0] = undeclared_{i} * inp[0]; }}"
            note = f"tried a fused kernel variant {i}"
        elif kind == 1:
            body = f"#include <stdlib.h>\n{SIGNATURE} {{ system(\"true\"); (void)out; }}"
            note = f"shell helper {i}"
        elif kind == 2:
            body = naive.replace("out_bt[o] = val;", f"out_bt[o] = val * {1 + (i + 1) / 100:.2f}f;")
            note = f"approximate accumulation {i}"
        elif kind == 3:
            out.append(f"I think we should block the loops (idea {i}). Idea: tile by {i % 7 + 2}")
            continue
        else:
            body = template.render(combos[i % len(combos)])
            note = f"tuned kernel {i}: " + ", ".join(f"{k}={v}" for k, v in combos[i].items())
        out.append(f"```c\n{body}\n```\nNote: {note}\nIdea: try variant {i + 1}\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        shutil.copytree(ROOT / "experiments" / "linear", repo / "linear",
                        ignore=shutil.ignore_patterns("runs", "winners", "SCORES.*", "MEMORY.*"))
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
            subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *cmd],
                           cwd=repo, check=True)
        exp = experiment_mod.load(repo / "linear")
        proposer = ReplayProposer(replies(args.iterations, random.Random(7)))
        summary = run_loop(exp, proposer, Options(iterations=args.iterations, drift_every=0))
        sizes = [len(p) for p in proposer.prompts]
        memory_md = (exp.root / "MEMORY.md").read_text()
    statuses: dict[str, int] = {}
    for o in summary.outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    print(f"{len(sizes)} iterations: {statuses}")
    print(f"{'iteration':>9} {'chars':>7} {'~tokens':>8}")
    for i in sorted({0, 1, 4, 9, 19, 29, 39, len(sizes) - 1}):
        if i < len(sizes):
            print(f"{i + 1:>9} {sizes[i]:>7} {sizes[i] // 4:>8}")
    print(f"max {max(sizes)} chars (~{max(sizes) // 4} tokens), last {sizes[-1]} chars;"
          f" final MEMORY.md {len(memory_md)} chars (cap 3500)")


if __name__ == "__main__":
    main()
