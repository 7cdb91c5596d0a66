"""Start-up cost of the commands that do not run a loop: wall time and peak memory per process.

Issue "a loop that costs nothing": `ratchet --help`, `scores`, `history`, `best`, `models`,
`doctor` and `init --help` must each take at most 0.3 s and 60 MiB as a whole process. This
runs every command as a fresh process N times, BEFORE (a `git worktree` of an older commit,
imported through PYTHONPATH) and AFTER (this checkout) interleaved, and prints the median wall
time and the peak RSS (from `os.wait4`, i.e. the whole process, as /usr/bin/time reports it).

    python benchmarks/bench_startup.py [--runs 9] [--before b7fe41e | --before-src DIR]

scores/history/best read experiments/fib of this checkout (read-only); `best` exits 2 there
when fib has no winner yet, which still loads the contract and SCORES.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIB = ROOT / "experiments" / "fib"
WALL_TARGET = 0.3  # seconds
RSS_TARGET = 60.0  # MiB
# The console script's entry without the script: the same for both trees (PYTHONPATH picks one).
ENTRY = "import sys; from ratchetloop.cli import main; main(sys.argv[1:], prog_name='ratchet')"
COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"], "scores fib": ["scores", str(FIB)],
    "history fib": ["history", str(FIB)], "best fib": ["best", str(FIB)],
    "models": ["models"], "doctor": ["doctor"], "init --help": ["init", "--help"],
}


@contextmanager
def before_tree(commit: str, src: str | None) -> Iterator[Path]:
    """The older tree's src/: a given folder, or a temporary detached worktree of `commit`."""
    if src:
        yield Path(src).resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="ratchet-before-"))
    tree = tmp / "tree"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), commit], cwd=ROOT,
                   check=True)
    try:
        yield tree / "src"
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                       check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def run_once(src: Path, args: list[str]) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, exit code) of one whole `ratchet` process.

    CPU time (user + system) is reported next to wall time because it barely moves when
    other work shares the machine, so a busy host cannot hide or fake a change."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of exactly this child (and its children)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def check_import_source(src: Path) -> None:
    """Fail loudly if PYTHONPATH does not pick the intended tree (an editable install would)."""
    out = subprocess.run([sys.executable, "-c", "import ratchetloop; print(ratchetloop.__file__)"],
                         env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True,
                         text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"PYTHONPATH={src} imports ratchetloop from {out}")


def verdict(wall: float, rss: float) -> str:
    return "yes" if wall <= WALL_TARGET and rss <= RSS_TARGET else "NO"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9, help="processes per command and side")
    ap.add_argument("--before", default="b7fe41e", help="commit to compare against")
    ap.add_argument("--before-src", default=None, help="an existing src/ folder instead")
    args = ap.parse_args()
    after = ROOT / "src"
    with before_tree(args.before, args.before_src) as before:
        sides = {"before": before, "after": after}
        for src in sides.values():
            check_import_source(src)
        walls: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        rss: dict[tuple[str, str], list[float]] = {}
        codes: dict[tuple[str, str], set[int]] = {}
        for command in COMMANDS.values():  # warm-up: byte-compile both trees, fill the cache
            for src in sides.values():
                run_once(src, command)
        for i in range(args.runs):
            order = list(sides.items()) if i % 2 == 0 else list(sides.items())[::-1]
            for name, command in COMMANDS.items():
                for side, src in order:
                    key = (name, side)
                    wall, cpu, peak, code = run_once(src, command)
                    walls.setdefault(key, []).append(wall)
                    cpus.setdefault(key, []).append(cpu)
                    rss.setdefault(key, []).append(peak)
                    codes.setdefault(key, set()).add(code)
    print(f"{args.runs} runs per command and side, interleaved; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print(f"before = {args.before_src or args.before}, after = this checkout;"
          f" target <= {WALL_TARGET} s and <= {RSS_TARGET:.0f} MiB")
    head = (f"{'command':<14} {'before s':>9} {'after s':>8} {'ratio':>6}  "
            f"{'cpu before':>10} {'cpu after':>9}  "
            f"{'before MiB':>10} {'after MiB':>9} {'ratio':>6}  {'exit':>4}  "
            f"{'before ok':>9} {'after ok':>8}")
    print(head)
    print("-" * len(head))
    for name in COMMANDS:
        wb, wa = (statistics.median(walls[(name, s)]) for s in ("before", "after"))
        cb, ca = (statistics.median(cpus[(name, s)]) for s in ("before", "after"))
        rb, ra = (max(rss[(name, s)]) for s in ("before", "after"))
        exits = ",".join(str(c) for c in sorted(codes[(name, "after")]))
        print(f"{name:<14} {wb:>9.3f} {wa:>8.3f} {wa / wb:>6.2f}  {cb:>10.3f} {ca:>9.3f}  "
              f"{rb:>10.1f} {ra:>9.1f} {ra / rb:>6.2f}  {exits:>4}  {verdict(wb, rb):>9}"
              f" {verdict(wa, ra):>8}")
    print("wall and cpu (user+system): median over runs; MiB: largest peak RSS over runs"
          " (os.wait4 ru_maxrss); ok: median wall and peak RSS within target")


if __name__ == "__main__":
    main()
