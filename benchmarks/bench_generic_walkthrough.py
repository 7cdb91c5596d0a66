"""Generic mode end to end: the fib walkthrough of docs/your-own-project.md, before vs after.

Target: "the fib walkthrough, 8 iterations with a 1 ms fake model, in at most 15 s wall on
this machine, making the same decisions it makes now".

What one run does, in a fresh temp dir, exactly as the doc's "Five minutes" section:

  1. writes fib.py (naive recursion), bench.py, test_fib.py; git init and commit;
  2. `ratchet init --tag fib --edit fib.py --read bench.py --run "python3 bench.py"
     --metric-regex 'us_per_call=(\\S+)' --lower-is-better --unit us
     --check "python3 test_fib.py"`                                   (timed: init wall);
  3. `ratchet run fib --model openai-compatible:fake@http://127.0.0.1:<port>/v1 --loop 8`
     (timed: run wall, the whole process).

The model is tests/fakeservers.py's FakeModelServer (the real Chat Completions wire
format) answering every request after 1 ms with the next of 16 scripted replies, in a fixed
order: the doc's replies (memoise, the wrong shortcut and its two wrong fixes, iterate) and
more realistic ones (functools.lru_cache, a while loop, a wrong closed form and its fix, a
slower nested memo, a duplicate of the rejected loop, a precomputed table...). Crashes ask
for up to two fixes, which consume replies too, so the script is longer than the loop.

BEFORE is commit b7fe41e, checked out with `git worktree add` into a temp dir and run as
`<this python> -c "...from ratchetloop.cli import main; main()"` with PYTHONPATH=<worktree>/src,
which wins over the editable install (a dry check prints ratchetloop.__file__ for both
sides and stops if either is wrong). AFTER is this checkout (PYTHONPATH=<repo>/src). The
two alternate in ABBA order (B A A B B A ...) so that drift on a shared, noisy machine hits
both alike; every run gets its own fibdemo dir and its own fake server. The loop's
host-wide benchmark lock is pointed at a private file (RATCHET_BENCH_LOCK) so another
user's benchmark cannot make a run wait; pass --shared-lock to keep the host lock.

Printed: init and run wall per repeat and their medians, after/before, whether the after
median is within the 15 s target, each run's decision sequence (runs/<n>/attempt.json:
status, failure kind, note, measured speedup, rounds from result.json, fix requests), the
metric command runs inside evaluations (the samples in result.json: 2 per round; the check
and crashed runs are not counted), the results.tsv rows and the model requests, and whether
before and after made the same decisions (status + failure kind + note per iteration).

    .venv/bin/python benchmarks/bench_generic_walkthrough.py [--repeats 2] [--loop 8]
        [--delay-ms 1] [--before b7fe41e] [--keep] [--shared-lock]

The temp worktree is removed at the end (in a finally), as are the fibdemo dirs unless
--keep is given.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fakeservers import FakeModelServer, Reply  # noqa: E402

BEFORE_COMMIT = "b7fe41e"
TARGET_SECONDS = 15.0
TAG = "fib"

# ------------------------------------------------------------------ the doc's project

FIB_PY = """\
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)
"""

BENCH_PY = """\
import os
import time
from fib import fib

expected = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597]
assert [fib(n) for n in range(18)] == expected, "fib is wrong"  # exit 1 = a crash
start = time.perf_counter()
for _ in range(20):
    fib(20)
us = (time.perf_counter() - start) / 20 * 1e6
fd = os.environ.get("RATCHET_RESULT_FD")          # the result channel (see below)
if fd: os.write(int(fd), f"{us}\\n".encode())
print(f"us_per_call={us:.2f}")
"""

TEST_FIB_PY = """\
from fib import fib
a, b = 0, 1
for n in range(25):
    assert fib(n) == a, f"fib({n}) is wrong"
    a, b = b, a + b
"""

INIT_ARGS = ["init", "--tag", TAG, "--edit", "fib.py", "--read", "bench.py",
             "--run", "python3 bench.py", "--metric-regex", r"us_per_call=(\S+)",
             "--lower-is-better", "--unit", "us", "--check", "python3 test_fib.py"]

# ------------------------------------------------------------------ the scripted model

MEMO = ("def fib(n, _c={0: 0, 1: 1}):\n    if n not in _c:\n"
        "        _c[n] = fib(n - 1) + fib(n - 2)\n    return _c[n]\n")
WRONG = "def fib(n):\n    return 999\n"
FIX1 = "def fib(n):\n    return n if n < 2 else 999\n"
FIX2 = "def fib(n):\n    return n if n < 3 else 999\n"
LOOP = ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
        "    return a\n")
LRU = ("import functools\n\n\n@functools.lru_cache(maxsize=None)\ndef fib(n):\n"
       "    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n")
WHILE = ("def fib(n):\n    a, b = 0, 1\n    i = 0\n    while i < n:\n"
         "        a, b = b, a + b\n        i += 1\n    return a\n")
CLOSED_WRONG = ("import math\n\n_PHI = (1 + math.sqrt(5)) / 2\n_S5 = math.sqrt(5)\n\n\n"
                "def fib(n):\n    return int(_PHI ** n / _S5)\n")
CLOSED_FIX = ("import math\n\n_PHI = (1 + math.sqrt(5)) / 2\n_S5 = math.sqrt(5)\n\n\n"
              "def fib(n):\n    return round(_PHI ** n / _S5)\n")
NESTED = ("def fib(n):\n    memo = {0: 0, 1: 1}\n\n    def go(k):\n        if k not in memo:\n"
          "            memo[k] = go(k - 1) + go(k - 2)\n        return memo[k]\n\n"
          "    return go(n)\n")
CACHE = ("from functools import cache\n\n\n@cache\ndef fib(n):\n"
         "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n")
TABLE = ("_T = [0, 1]\nfor _ in range(98):\n    _T.append(_T[-1] + _T[-2])\n\n\n"
         "def fib(n):\n    return _T[n] if n < len(_T) else fib(n - 1) + fib(n - 2)\n")
LIST_DP = ("def fib(n):\n    if n < 2:\n        return n\n    f = [0] * (n + 1)\n    f[1] = 1\n"
           "    for i in range(2, n + 1):\n        f[i] = f[i - 1] + f[i - 2]\n    return f[n]\n")
MATRIX = ("def fib(n):\n    def step(k):\n        if k == 0:\n            return 0, 1\n"
          "        a, b = step(k // 2)\n        c = a * (2 * b - a)\n        d = a * a + b * b\n"
          "        return (d, c + d) if k % 2 else (c, d)\n\n    return step(n)[0]\n")

SCRIPT: list[tuple[str, str]] = [
    (MEMO, "memoise in a dict"),                 # doc
    (WRONG, "shortcut"),                         # doc: crashes (assert in bench.py)
    (FIX1, "fix small n"),                       # doc: the 1st fix, still wrong
    (FIX2, "fix n=2"),                           # doc: the 2nd fix, still wrong
    (LOOP, "iterate"),                           # doc
    (LRU, "functools.lru_cache on the recursion"),
    (WHILE, "iterative with tuple unpacking in a while loop"),
    (CLOSED_WRONG, "closed form (Binet)"),       # truncates: wrong, crashes
    (CLOSED_FIX, "closed form, rounded"),        # its fix: correct
    (NESTED, "memo dict rebuilt per call"),      # slower than the warm cache
    (LOOP, "iterate again"),                     # duplicate of a rejected reply's code
    (CACHE, "functools.cache"),
    (TABLE, "precomputed table"),
    (LIST_DP, "bottom-up list"),
    (MATRIX, "fast doubling"),
    (MEMO, "memoise in a dict again"),           # the current best again: no change
]


def scripted_replies() -> list[str]:
    """The model's replies in the doc's format: `File: fib.py`, a fenced block, a note."""
    return [f"File: fib.py\n```python\n{src}```\nNote: {note}\n" for src, note in SCRIPT]


class DelayedServer(FakeModelServer):
    """FakeModelServer that takes `delay` seconds to think before each scripted reply."""

    def __init__(self, replies: list[str], delay: float) -> None:
        super().__init__(replies, default_text="")
        self.delay = delay

    def _next(self) -> Reply:
        time.sleep(self.delay)
        return super()._next()


# ------------------------------------------------------------------ one run


@dataclass
class Side:
    name: str  # "before" / "after"
    src: Path  # what goes on PYTHONPATH


@dataclass
class RunResult:
    side: str
    repeat: int
    init_seconds: float
    run_seconds: float
    run_rc: int
    decisions: list[dict[str, Any]] = field(default_factory=list)
    tsv_rows: int = 0
    requests: int = 0
    command_runs: int = 0
    output_tail: str = ""


def ratchet_cmd(*args: str) -> list[str]:
    code = "import sys; sys.argv[0] = 'ratchet'; from ratchetloop.cli import main; main()"
    return [sys.executable, "-c", code, *args]


def side_env(side: Side, lock: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(side.src)
    if lock is not None:
        env["RATCHET_BENCH_LOCK"] = str(lock)
    env.pop("OPENAI_COMPATIBLE_API_KEY", None)  # a local server needs no key
    return env


def dry_check(side: Side, env: dict[str, str], cwd: Path) -> str:
    """Which ratchetloop the side's command line imports; it must be the side's own."""
    code = "import ratchetloop; print(ratchetloop.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                         text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(side.src.resolve()):
        raise SystemExit(f"{side.name}: imports {out}, not from {side.src}")
    return out


def make_fibdemo(root: Path) -> Path:
    demo = root / "fibdemo"
    demo.mkdir(parents=True)
    (demo / "fib.py").write_text(FIB_PY)
    (demo / "bench.py").write_text(BENCH_PY)
    (demo / "test_fib.py").write_text(TEST_FIB_PY)
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    for args in (["init", "-q"], ["add", "."], [*ident, "commit", "-qm", "naive fib"]):
        subprocess.run(["git", *args], cwd=demo, check=True, capture_output=True)
    return demo


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_decisions(folder: Path) -> tuple[list[dict[str, Any]], int]:
    """Per iteration: status, failure kind, note, speedup, rounds; and the command runs."""
    runs = folder / "runs"
    dirs = sorted((d for d in runs.iterdir() if d.is_dir() and d.name.isdigit()),
                  key=lambda d: int(d.name)) if runs.is_dir() else []
    out: list[dict[str, Any]] = []
    command_runs = 0
    for d in dirs:
        attempt = read_json(d / "attempt.json")
        if not attempt:
            continue
        result = read_json(d / "result.json")
        decision = read_json(d / "decision.json")
        rounds = int(result.get("rounds") or 0)
        samples = result.get("samples") or {}
        runs_here = sum(len(v) for case in samples.values() if isinstance(case, dict)
                        for v in case.values() if isinstance(v, list))
        command_runs += runs_here
        ratio = attempt.get("ratio")
        overall = decision.get("overall") or {}
        out.append({
            "iteration": attempt.get("iteration", int(d.name)),
            "status": attempt.get("status"),
            "failure_kind": attempt.get("failure_kind"),
            "note": attempt.get("note") or "",
            "message": attempt.get("message") or "",
            "speedup": (1 / ratio) if isinstance(ratio, (int, float)) and ratio > 0 else None,
            "rounds": rounds,
            "fixes": len(list(d.glob("fix*.reply.md"))),
            "command_runs": runs_here,
            "verdict": overall.get("verdict"),
            "p_value": overall.get("p_value"),
            "noise": overall.get("noise"),
            "reasons": overall.get("reasons") or [],
        })
    return out, command_runs


def one_run(side: Side, repeat: int, root: Path, iterations: int, delay: float,
            lock: Path | None) -> RunResult:
    work = root / f"{side.name}-{repeat}"
    demo = make_fibdemo(work)
    env = side_env(side, lock)
    t = time.perf_counter()
    init = subprocess.run(ratchet_cmd(*INIT_ARGS), cwd=demo, env=env, capture_output=True,
                          text=True)
    init_seconds = time.perf_counter() - t
    if init.returncode != 0:
        raise SystemExit(f"{side.name} #{repeat}: ratchet init failed ({init.returncode}):\n"
                         f"{init.stdout}\n{init.stderr}")
    with DelayedServer(scripted_replies(), delay) as server:
        model = f"openai-compatible:fake@{server.openai_base_url}"
        t = time.perf_counter()
        run = subprocess.run(ratchet_cmd("run", TAG, "--model", model, "--loop", str(iterations)),
                             cwd=demo, env=env, capture_output=True, text=True)
        run_seconds = time.perf_counter() - t
        requests = len(server.posts())
    (work / "run.stdout").write_text(run.stdout)
    (work / "run.stderr").write_text(run.stderr)
    folder = demo / ".ratchet" / TAG
    decisions, command_runs = read_decisions(folder)
    tsv = folder / "results.tsv"
    rows = max(0, len(tsv.read_text().splitlines()) - 1) if tsv.is_file() else 0
    tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-15:])
    return RunResult(side.name, repeat, init_seconds, run_seconds, run.returncode, decisions,
                     rows, requests, command_runs, tail)


# ------------------------------------------------------------------ report


def signature(r: RunResult) -> list[tuple[Any, ...]]:
    return [(d["status"], d["failure_kind"], d["note"]) for d in r.decisions]


def fmt_decision(d: dict[str, Any]) -> str:
    status = d["status"] or "?"
    if d["status"] == "failed" and d["failure_kind"]:
        status += f"/{d['failure_kind']}"
    extra = []
    if d["speedup"] is not None:
        extra.append(f"x{d['speedup']:.2f}")
    if d["rounds"]:
        extra.append(f"{d['rounds']} rounds")
    if d["fixes"]:
        extra.append(f"{d['fixes']} fix(es)")
    return f"#{d['iteration']} {status:<20} {' '.join(extra):<28} ({d['note']})"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(results: list[RunResult], repeats: int, iterations: int, delay: float,
           paths: dict[str, str]) -> None:
    by = {s: [r for r in results if r.side == s] for s in ("before", "after")}
    print(f"\nfib walkthrough: --loop {iterations}, fake model {delay * 1e3:g} ms/reply,"
          f" {len(SCRIPT)} scripted replies, {repeats} repeat(s) per side (ABBA order)")
    for side, path in paths.items():
        print(f"  {side:<6} ratchetloop = {path}")
    print()
    print(f"{'repeat':<8}{'before init':>12}{'before run':>12}{'after init':>12}"
          f"{'after run':>12}")
    for i in range(repeats):
        b = next(r for r in by["before"] if r.repeat == i)
        a = next(r for r in by["after"] if r.repeat == i)
        print(f"{i:<8}{b.init_seconds:>11.2f}s{b.run_seconds:>11.2f}s"
              f"{a.init_seconds:>11.2f}s{a.run_seconds:>11.2f}s")
    med = {s: (median([r.init_seconds for r in rs]), median([r.run_seconds for r in rs]))
           for s, rs in by.items()}
    print(f"{'median':<8}{med['before'][0]:>11.2f}s{med['before'][1]:>11.2f}s"
          f"{med['after'][0]:>11.2f}s{med['after'][1]:>11.2f}s")
    print(f"\nafter/before (median run wall): {med['after'][1] / med['before'][1]:.3f}"
          f"   (init: {med['after'][0] / med['before'][0]:.3f})")
    ok = med["after"][1] <= TARGET_SECONDS
    print(f"after median run wall {med['after'][1]:.2f} s <= {TARGET_SECONDS:g} s target:"
          f" {'YES' if ok else 'NO'}")

    print("\nexit codes, requests, command runs:")
    for r in results:
        print(f"  {r.side:<6} #{r.repeat}: rc={r.run_rc} model requests={r.requests}"
              f" results.tsv rows={r.tsv_rows} metric runs in evaluations={r.command_runs}"
              f" (rounds={sum(d['rounds'] for d in r.decisions)})")

    print("\ndecisions:")
    for r in results:
        print(f"  {r.side} #{r.repeat}  (run {r.run_seconds:.2f} s)")
        for d in r.decisions:
            print(f"    {fmt_decision(d)}")
        if not r.decisions or r.run_rc != 0:
            print("    output tail:\n      " + r.output_tail.replace("\n", "\n      "))

    sigs = {tuple(signature(r)) for r in results}
    if len(sigs) == 1:
        print("\nsame decisions: YES (every run, before and after, made the same sequence)")
        return
    before = {tuple(signature(r)) for r in by["before"]}
    after = {tuple(signature(r)) for r in by["after"]}
    print("\nsame decisions: NO")
    print(f"  distinct sequences: before {len(before)}, after {len(after)},"
          f" before and after share {len(before & after)}")
    ref = signature(results[0])
    for r in results[1:]:
        for i, (x, y) in enumerate(zip(ref, signature(r), strict=False)):
            if x != y:
                d = r.decisions[i]
                print(f"  {r.side} #{r.repeat} differs from {results[0].side}"
                      f" #{results[0].repeat} at iteration {i + 1}: {x} vs {y};"
                      f" verdict={d['verdict']} p={d['p_value']} noise={d['noise']}"
                      f" reasons={d['reasons']} message={d['message'][:160]!r}")
                break
        else:
            if len(ref) != len(r.decisions):
                print(f"  {r.side} #{r.repeat}: {len(r.decisions)} iterations vs {len(ref)}")


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs per side (default 2)")
    ap.add_argument("--loop", type=int, default=8, help="iterations per run (default 8)")
    ap.add_argument("--delay-ms", type=float, default=1.0, help="fake model latency")
    ap.add_argument("--before", default=BEFORE_COMMIT, help="the BEFORE commit")
    ap.add_argument("--keep", action="store_true", help="keep the fibdemo dirs")
    ap.add_argument("--shared-lock", action="store_true",
                    help="use the host-wide benchmark lock instead of a private one")
    args = ap.parse_args()
    delay = args.delay_ms / 1e3

    root = Path(tempfile.mkdtemp(prefix="bench-walkthrough-"))
    worktree = root / "before-src"
    lock = None if args.shared_lock else root / "bench.lock"
    added = False
    try:
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before],
                       cwd=REPO, check=True, capture_output=True)
        added = True
        sides = {"before": Side("before", worktree / "src"), "after": Side("after", REPO / "src")}
        paths = {name: dry_check(s, side_env(s, lock), root) for name, s in sides.items()}
        for name, p in paths.items():
            print(f"dry check: {name} imports {p}", flush=True)
        order = ["before", "after", "after", "before"]
        results: list[RunResult] = []
        for i in range(args.repeats):
            for name in order[(i % 2) * 2:(i % 2) * 2 + 2]:
                r = one_run(sides[name], i, root, args.loop, delay, lock)
                print(f"  {name:<6} #{i}: init {r.init_seconds:.2f} s, run {r.run_seconds:.2f} s,"
                      f" rc={r.run_rc}, {len(r.decisions)} iterations", flush=True)
                results.append(r)
        report(results, args.repeats, args.loop, delay, paths)
        if args.keep:
            print(f"\nkept: {root}")
    finally:
        if added:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO,
                           capture_output=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
