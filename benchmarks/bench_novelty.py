"""What the novelty filter saves: a real 50-iteration run on the fib experiment, twice, with
the same replayed replies (`replay:<file>`), without and with `--novelty`.

The script is what a model that keeps circling back sends: a dozen distinct ideas, each
followed later by near-duplicates of itself (a docstring, a spelled-out `range(0, n)`,
a redundant statement, operands swapped), and a few exact repeats. Exact repeats are
skipped by fingerprint in both runs; near-duplicates are evaluated without the filter and
skipped with it. Printed per run: evaluations done, skipped (exact / near), wall time, the
best score; then the evaluations and wall time the filter saved.

    python benchmarks/bench_novelty.py [--iterations 50] [--threshold 0.97 0.9 ...]
                                       [--rounds 2] [--quick]

--quick uses the test suite's small timing budget (6 paired rounds) instead of the
experiment's own (8-40 rounds at 99%), for a fast look. The evaluations saved are exact
(the script is fixed); wall times move with the host's load, so --rounds runs each
setting again in ABBA order and compares the means.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ratchetloop import experiment as experiment_mod  # noqa: E402
from ratchetloop import novelty  # noqa: E402
from ratchetloop.loop import Options, run_loop  # noqa: E402
from ratchetloop.proposers import registry  # noqa: E402

QUICK = {"min_effect": 0.02, "confidence": 0.9, "min_rounds": 6, "max_rounds": 6,
         "batch_rounds": 6, "max_seconds": 5}

IDEAS = {
    "memoise in a default-argument dict": (
        "def fib(n, _cache={0: 0, 1: 1}):\n    if n not in _cache:\n"
        "        _cache[n] = fib(n - 1) + fib(n - 2)\n    return _cache[n]\n"),
    "iterate bottom-up with two variables": (
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
        "    return a\n"),
    "functools.lru_cache on the recursion": (
        "import functools\n\n\n@functools.lru_cache(maxsize=None)\ndef fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"),
    "fast doubling identities": (
        "def fib(n):\n    a, b = 0, 1\n    for bit in bin(n)[2:]:\n        c = a * (2 * b - a)\n"
        "        d = a * a + b * b\n        a, b = (d, c + d) if bit == \"1\" else (c, d)\n"
        "    return a\n"),
    "2x2 matrix power by squaring": (
        "def fib(n):\n    def mul(x, y):\n"
        "        return (x[0] * y[0] + x[1] * y[2], x[0] * y[1] + x[1] * y[3],\n"
        "                x[2] * y[0] + x[3] * y[2], x[2] * y[1] + x[3] * y[3])\n"
        "    result, base = (1, 0, 0, 1), (1, 1, 1, 0)\n    while n:\n        if n & 1:\n"
        "            result = mul(result, base)\n        base = mul(base, base)\n"
        "        n >>= 1\n    return result[1]\n"),
    "a table of all answers built at import": (
        "_TABLE = [0, 1]\nfor _i in range(2, 301):\n"
        "    _TABLE.append(_TABLE[-1] + _TABLE[-2])\n\n\n"
        "def fib(n):\n    return _TABLE[n]\n"),
    "a while loop counting down": (
        "def fib(n):\n    a, b = 0, 1\n    while n > 0:\n        a, b = b, a + b\n        n -= 1\n"
        "    return a\n"),
    "memoise in a module dict": (
        "_MEMO = {0: 0, 1: 1}\n\n\ndef fib(n):\n    if n in _MEMO:\n        return _MEMO[n]\n"
        "    value = fib(n - 1) + fib(n - 2)\n    _MEMO[n] = value\n    return value\n"),
    "functools.cache on the recursion": (
        "from functools import cache\n\n\n@cache\ndef fib(n):\n    if n < 2:\n        return n\n"
        "    return fib(n - 1) + fib(n - 2)\n"),
    "reduce over a range": (
        "from functools import reduce\n\n\ndef fib(n):\n"
        "    return reduce(lambda p, _: (p[1], p[0] + p[1]), range(n), (0, 1))[0]\n"),
    "grow a list lazily across calls": (
        "_SEEN = [0, 1]\n\n\ndef fib(n):\n    while len(_SEEN) <= n:\n"
        "        _SEEN.append(_SEEN[-1] + _SEEN[-2])\n    return _SEEN[n]\n"),
    "closed form with floats (inexact past n=70)": (
        "def fib(n):\n    phi = (1 + 5 ** 0.5) / 2\n    return round(phi ** n / 5 ** 0.5)\n"),
}


def near_duplicates(source: str) -> list[tuple[str, str]]:
    """Small rewrites a model makes of its own earlier code, none of them a new idea."""
    lines = source.splitlines(keepends=True)
    first_def = next(i for i, line in enumerate(lines) if line.startswith("def fib"))
    doc = lines[:first_def + 1] + ['    """Compute F(n)."""\n'] + lines[first_def + 1:]
    out = [("with a docstring", "".join(doc))]
    if "range(n)" in source:
        out.append(("range(0, n)", source.replace("range(n)", "range(0, n)", 1)))
    if "a + b" in source:
        out.append(("operands swapped", source.replace("a + b", "b + a", 1)))
    if "fib(n - 1) + fib(n - 2)" in source:
        out.append(("recursion swapped", source.replace("fib(n - 1) + fib(n - 2)",
                                                        "fib(n - 2) + fib(n - 1)", 1)))
    guard = lines[:first_def + 1] + ["    n = int(n)\n"] + lines[first_def + 1:]
    out.append(("a redundant int(n)", "".join(guard)))
    return out


def script(iterations: int) -> tuple[list[str], Counter[str]]:
    """Replies: each idea, then, interleaved later, its near-duplicates and exact repeats."""
    firsts = [(note, src, "new idea") for note, src in IDEAS.items()]
    later = [(f"{note}, {how}", src, "near-duplicate") for note, orig in IDEAS.items()
             for how, src in near_duplicates(orig)]
    repeats = [(f"{note} (again)", src.replace("\n\n\n", "\n\n"), "exact repeat")
               for note, src in list(IDEAS.items())[:5]]
    order: list[tuple[str, str, str]] = []
    waiting: list[tuple[str, str, str]] = []  # revisits of ideas already sent
    per_idea = -(-(len(later) + len(repeats)) // len(firsts))
    for first in firsts:  # ideas arrive over the run; revisits of earlier ones in between
        order.append(first)
        waiting += [t for t in later + repeats if t[0].startswith(first[0])]
        order += waiting[:per_idea]
        waiting = waiting[per_idea:]
    order += waiting
    order = order[:iterations]
    kinds = Counter(kind for _, _, kind in order)
    return [f"Here.\n\n```python\n{src}```\nNote: {note}\n" for note, src, _ in order], kinds


def one_run(replies: list[str], threshold: float | None, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        folder = repo / "fib"
        shutil.copytree(ROOT / "experiments" / "fib", folder, ignore=shutil.ignore_patterns(
            "runs", "winners", "SCORES.*", "MEMORY.*", "__pycache__", ".ratchet*"))
        if quick:
            contract = json.loads((folder / "experiment.json").read_text())
            contract["acceptance"] = QUICK
            (folder / "experiment.json").write_text(json.dumps(contract))
        (repo / "replay.json").write_text(json.dumps(replies))
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
            subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *cmd],
                           cwd=repo, check=True)
        exp = experiment_mod.load(folder)
        proposer = registry.resolve(f"replay:{repo / 'replay.json'}", exp)
        start = time.monotonic()
        summary = run_loop(exp, proposer, Options(iterations=len(replies), drift_every=0,
                                                  novelty=threshold))
        wall = time.monotonic() - start
        tries = [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/attempt.json"))]
        evaluated = len(list(folder.glob("runs/*/result.json")))
    kinds = Counter(a["failure_kind"] for a in tries if a["status"] == "duplicate")
    return {"attempts": len(tries), "evaluated": evaluated, "exact": kinds["duplicate"],
            "near": kinds["novelty"], "wall": wall,
            "best": summary.best.score if summary.best else None,
            "accepted": sum(a["status"].startswith("accepted") for a in tries)}


def label(threshold: float | None) -> str:
    return "without filter" if threshold is None else f"--novelty {threshold}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--threshold", type=float, nargs="+", default=[novelty.DEFAULT_THRESHOLD])
    ap.add_argument("--rounds", type=int, default=1, help="runs per setting, in ABBA order"
                    " (the host's load drifts: wall times are compared as means)")
    ap.add_argument("--quick", action="store_true", help="small timing budget (6 rounds)")
    args = ap.parse_args()
    replies, kinds = script(args.iterations)
    budget = "quick (6 rounds)" if args.quick else "the experiment's own"
    originals = {n: novelty.tokens(s, "python") for n, s in IDEAS.items()}
    sims = [novelty.similarity(originals[n], novelty.tokens(s, "python"))
            for n, orig in IDEAS.items() for _, s in near_duplicates(orig)]
    print(f"script: {len(replies)} replies: {kinds['new idea']} new ideas,"
          f" {kinds['near-duplicate']} near-duplicates, {kinds['exact repeat']} exact repeats;"
          f" near-duplicates share {min(sims):.1%}..{max(sims):.1%} of tokens with their idea;"
          f" timing budget: {budget}")
    settings: list[float | None] = [None, *args.threshold]
    runs: dict[float | None, list[dict]] = {t: [] for t in settings}
    for i in range(args.rounds):
        for threshold in settings if i % 2 == 0 else settings[::-1]:
            r = one_run(replies, threshold, args.quick)
            runs[threshold].append(r)
            best = "n/a" if r["best"] is None else f"{r['best']:.3f} us"
            print(f"{label(threshold):>16}: {r['attempts']} attempts, {r['evaluated']}"
                  f" evaluations, skipped {r['exact']} exact + {r['near']} near duplicates,"
                  f" {r['accepted']} accepted, best {best}, wall {r['wall']:.1f} s", flush=True)
    base = runs[None]
    base_evals = base[0]["evaluated"]
    base_wall = statistics.mean(r["wall"] for r in base)
    for threshold in args.threshold:
        got = runs[threshold]
        saved = base_evals - got[0]["evaluated"]
        wall = statistics.mean(r["wall"] for r in got)
        print(f"{label(threshold)}: saved {saved} of {base_evals} evaluations"
              f" ({saved / max(base_evals, 1):.0%}); mean wall {wall:.1f} s against"
              f" {base_wall:.1f} s without (x{base_wall / max(wall, 1e-9):.2f})")


if __name__ == "__main__":
    main()
