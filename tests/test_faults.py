"""Crash safety: `ratchet run` killed at any instant resumes and loses no accepted winner.

The run is a real subprocess (its own process group, so git and every other child dies with
it, as on a power cut) on a fib copy whose replay script yields a winner almost every
iteration. It is SIGKILLed again and again, at points drawn from a seeded RNG and right
after it moves the branch (the narrowest window: winner committed, not yet recorded), and
after every kill a resume (`ratchet run --loop 0`, then the next killed run) must find:
  * every state file parses (SCORES.json, MEMORY.json, every runs/<n>/*.json);
  * attempt numbering only grows: no runs/<n>/ written by one run is rewritten by another;
  * every Accept commit in `git log` is exactly once in SCORES.json with winners/<commit>/
    holding that commit's source; the best commit is the last best Accept commit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import RATCHET, git, reply, slow_fib, write_replay

KILLS = 10
RNG_SEED = 20260
ITERS = [16000, 8000, 4000, 2000, 1000, 500]


def script() -> list[str]:
    replies = []
    for i, k in enumerate(ITERS):
        replies.append(reply(slow_fib(k), f"burn {k} steps"))
        if i % 2:
            replies.append(f"no code this time ({k})")  # a recorded failure between winners
    return replies


def start(folder: Path, model: str, loop: int, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([RATCHET, "run", str(folder), "--model", model, "--loop", str(loop)],
                            cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def branch_head(repo: Path) -> str:
    ref = repo / ".git" / "refs" / "heads" / "main"
    try:
        return ref.read_text()
    except OSError:
        return ""


def kill_after_commits(proc: subprocess.Popen[bytes], repo: Path, commits: int,
                       limit: float) -> bool:
    """SIGKILL as soon as the branch has moved `commits` times; False if the run ended."""
    seen, moves, deadline = branch_head(repo), 0, time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        now = branch_head(repo)
        if now and now != seen:
            seen, moves = now, moves + 1
            if moves >= commits:
                break
        time.sleep(0.001)  # polling a file: there is no portable event for a ref update
    if proc.poll() is not None:
        return False
    kill_group(proc)
    return True


def kill_after(proc: subprocess.Popen[bytes], delay: float) -> bool:
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return True


def parse_all_state(folder: Path) -> None:
    for name in ("SCORES.json", "MEMORY.json"):
        if (folder / name).exists():
            json.loads((folder / name).read_text())
    for f in (folder / "runs").glob("*/*.json") if (folder / "runs").is_dir() else []:
        json.loads(f.read_text())


def accept_commits(repo: Path) -> list[tuple[str, str]]:
    out = git(repo, "log", "--reverse", "--format=%h%x1f%s", "--grep", "^Ratchet-Row: ")
    return [tuple(line.split("\x1f")) for line in out.splitlines() if line]  # type: ignore


def check_resumed(folder: Path, repo: Path, snapshots: dict[str, str]) -> dict[str, int]:
    """The strong invariants, after a resume; returns counts for the report."""
    parse_all_state(folder)
    sc = json.loads((folder / "SCORES.json").read_text())
    commits = accept_commits(repo)
    recorded = [r["commit"] for r in sc["rows"]]
    lost = [sha for sha, _ in commits if sha not in recorded]
    duplicated = [sha for sha in set(recorded) if recorded.count(sha) > 1]
    assert not lost, f"accepted winners missing from SCORES.json: {lost}"
    assert not duplicated, f"winners recorded twice: {duplicated}"
    assert sorted(recorded) == sorted(sha for sha, _ in commits), "rows without an Accept commit"
    for sha, _ in commits:
        archived = folder / "winners" / sha / "candidate.py"
        assert archived.is_file(), f"winners/{sha}/ missing"
        assert archived.read_text() == git(repo, "show", f"{sha}:experiments/fib/candidate.py")
    bests = [sha for sha, subject in commits if " winner from " in subject
             and "nonbest" not in subject]
    if bests:
        assert sc["best_commit"] == bests[-1]
    assert sc["counts"]["accepted"] == len(recorded), sc["counts"]
    seen = json.loads((folder / "MEMORY.json").read_text())["seen"].values()
    assert all(f"accepted {sha}" in seen for sha in recorded), "memory forgot a winner"
    iterations = [r["iteration"] for r in sc["rows"]]
    assert iterations == sorted(iterations) and len(set(iterations)) == len(iterations)
    # numbering only grows: what an earlier run wrote into runs/<n>/ is never rewritten
    for rel, text in snapshots.items():
        assert (folder / "runs" / rel).read_text() == text, f"runs/{rel} was rewritten"
    runs = folder / "runs"
    last = max((int(p.name) for p in runs.iterdir()), default=0) if runs.is_dir() else 0
    assert sc["last_iteration"] <= last
    return {"winners": len(commits)}


def snapshot(folder: Path) -> dict[str, str]:
    runs = folder / "runs"
    if not runs.is_dir():
        return {}
    return {f"{p.parent.name}/{p.name}": p.read_text() for p in runs.glob("*/prompt.md")}


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_loses_no_winner(exp_repo, tmp_path: Path) -> None:
    folder = exp_repo("fib", cases=["fib18"])
    repo = folder.parents[1]
    replies = script()
    model = write_replay(tmp_path / "replay.json", replies)
    log = tmp_path / "ratchet.log"
    rng = random.Random(RNG_SEED)
    kills = {"random": 0, "after_commit": 0}
    snapshots: dict[str, str] = {}
    tmp_left = 0
    for round_no in range(KILLS):
        proc = start(folder, model, len(replies), log)
        if round_no % 3 == 2:
            killed = kill_after_commits(proc, repo, rng.choice([1, 2]), limit=60)
            kind = "after_commit"
        else:
            killed = kill_after(proc, rng.uniform(0.3, 5.0))
            kind = "random"
        if not killed:
            break  # the run finished the whole script before the kill point
        kills[kind] += 1
        parse_all_state(folder)  # even before a resume, no state file is half-written
        tmp_left += len(list(folder.glob(".*.tmp")))
        resume = subprocess.run([RATCHET, "run", str(folder), "--model", model, "--loop", "0"],
                                cwd=folder, capture_output=True, text=True, timeout=120)
        assert resume.returncode == 0, resume.stdout + resume.stderr
        check_resumed(folder, repo, snapshots)
        snapshots.update(snapshot(folder))
    final = subprocess.run([RATCHET, "run", str(folder), "--model", model,
                            "--loop", str(len(replies))],
                           cwd=folder, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stdout + final.stderr + log.read_text()[-3000:]
    figures = check_resumed(folder, repo, snapshots)
    sc = json.loads((folder / "SCORES.json").read_text())
    best = (folder / "winners" / sc["best_commit"] / "candidate.py").read_text()
    # the whole script got through: the last (fastest) candidate is the best
    assert best == slow_fib(ITERS[-1]), best
    print(f"\nfault injection: kills {kills}, accepted winners {figures['winners']},"
          f" lost 0, duplicated 0, temp files left by kills {tmp_left}")
    assert sum(kills.values()) >= KILLS // 2, kills


@pytest.mark.slow
def test_ctrl_c_ends_with_a_summary_and_whole_files(exp_repo, tmp_path: Path) -> None:
    folder = exp_repo("fib", cases=["fib18"])
    repo = folder.parents[1]
    replies = [reply(slow_fib(k), f"burn {k} steps") for k in (16000, 4000, 1000)]
    model = write_replay(tmp_path / "replay.json", replies)
    proc = subprocess.Popen([RATCHET, "run", str(folder), "--model", model, "--loop", "3"],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    second = folder / "runs" / "0002" / "prompt.md"
    deadline = time.monotonic() + 120
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a file: no portable event for "file appeared"
    assert proc.poll() is None, "run ended before the second iteration"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=120)
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    assert "interrupted (Ctrl-C)" in text and "Traceback" not in text, text
    assert "scoreboard:" in text  # the summary was printed
    parse_all_state(folder)
    assert not list(folder.rglob(".*.tmp")), "half-written temp files left behind"
    check_resumed(folder, repo, {})
    sc = json.loads((folder / "SCORES.json").read_text())
    assert len(sc["rows"]) == 1  # the first winner, recorded; the interrupted one not
    interrupted = json.loads((folder / "runs" / "0002" / "attempt.json").read_text())
    assert interrupted["status"] == "interrupted"  # the record of the cut attempt is finished
    assert not (folder / ".ratchet.lock.holder").exists()  # the lock was released


def test_commit_after_a_killed_git_clears_its_stale_locks(fib: Path) -> None:
    from ratchetloop import gitops

    repo = fib.parents[1]
    stale = [repo / ".git" / "index.lock", repo / ".git" / "HEAD.lock",
             repo / ".git" / "refs" / "heads" / "main.lock"]
    for lock in stale:
        lock.write_text("")
        os.utime(lock, (time.time() - 30, time.time() - 30))  # left by a dead git
    (fib / "candidate.py").write_text("def fib(n):\n    return n\n")
    sha = gitops.commit_paths(repo, [fib / "candidate.py"], "Commit after a crash")
    assert git(repo, "log", "-1", "--format=%h %s").strip() == f"{sha} Commit after a crash"
    assert not any(lock.exists() for lock in stale)


def test_a_held_git_lock_is_waited_for_then_named(fib: Path) -> None:
    from ratchetloop import gitops
    from ratchetloop.errors import RatchetError

    repo = fib.parents[1]
    lock = repo / ".git" / "index.lock"
    with lock.open("w"):  # a live process (this one) holds it open
        with pytest.raises(RatchetError, match="index.lock exists"):
            gitops.clear_stale_locks(repo, wait=0.3)
    assert lock.exists()  # never removed from under a live git
    lock.unlink()
