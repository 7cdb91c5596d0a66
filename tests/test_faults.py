"""Crash safety: `ratchet run` killed at any instant resumes and loses no accepted winner.

The run is a real subprocess (its own process group, so git and every other child dies with
it, as on a power cut) on a fib copy whose replay script yields a winner almost every
iteration. It is SIGKILLed again and again, at points drawn from a seeded RNG and right
after it moves the branch (the narrowest window: winner committed, not yet recorded), and
after every kill a resume (`ratchet run --until 0`, then the next killed run) must find:
  * every state file parses (SCORES.json, MEMORY.json, every runs/<n>/*.json);
  * attempt numbering only grows: no runs/<n>/ written by one run is rewritten by another;
  * every Accept commit in `git log` is exactly once in SCORES.json with winners/<commit>/
    holding that commit's source; the best commit is the last best Accept commit.
The same with --parallel 4 (four requests to a slow fake model out at once), plus: every
runs/<n>/attempt.json is written once, no attempt number is accepted twice, and nothing of
a killed run lives on (its sandboxed evaluations included).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import GIT_ENV, ITERATIVE, PYTHON, RATCHET, git, reply, slow_fib, write_replay
from fakeservers import FakeModelServer

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


def check_resumed(folder: Path, repo: Path, snapshots: dict[str, str],
                  in_order: bool = True) -> dict[str, int]:
    """The strong invariants, after a resume; returns counts for the report. `in_order`:
    rows in attempt order (one attempt at a time; with K in flight, in order of decision)."""
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
    assert iterations == sorted(iterations) or not in_order, iterations
    assert len(set(iterations)) == len(iterations), iterations
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
            killed = kill_after(proc, rng.uniform(0.2, 2.0))  # a whole run takes a few s
            kind = "random"
        if not killed:
            break  # the run finished the whole script before the kill point
        kills[kind] += 1
        parse_all_state(folder)  # even before a resume, no state file is half-written
        tmp_left += len(list(folder.glob(".*.tmp")))
        resume = subprocess.run([RATCHET, "run", str(folder), "--model", model, "--until", "0"],
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
    assert proc.returncode == 130, text  # Ctrl-C: the record and summary, then 130
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


# ------------------------------------------------------------------ --parallel 4
#
# The same kills with four proposals in flight: the model is a fake OpenAI-compatible
# server (reached through the official SDK) that takes a while to answer, so four requests
# really are out when a kill lands, while evaluations queue for the one benchmark slot.

K = 4
K_KILLS = 5
LATENCY = 0.4  # seconds per reply: long enough for four requests to overlap


def proc_stat(pid: int) -> tuple[int, int, str, int] | None:
    """(ppid, pgid, state, start time) of a live process, from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[2]), fields[0], int(fields[19])


def all_processes() -> dict[int, tuple[int, int, str, int]]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := proc_stat(int(entry.name))) is not None:
            out[int(entry.name)] = st
    return out


def descendants(root: int) -> dict[int, int]:
    """Every process below `root` (whatever its session or group), pid -> start time."""
    procs = all_processes()
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _, start) in procs.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def left_behind(group: int, tree: dict[int, int], limit: float = 1.0) -> list[str]:
    """What of a SIGKILLed run still lives: its process group, or anything that was below
    it (a child in a session of its own survives a group kill). Dying takes the kernel a
    moment after kill() returns, so this waits up to `limit` seconds for them to go; an
    evaluation left to finish on its own takes longer, and would overlap the timing of
    the run that resumes (the benchmark lock died with its holder)."""
    deadline = time.monotonic() + limit
    while True:
        alive = [pid for pid, (_, pgid, state, start) in all_processes().items()
                 if state not in "ZX" and (pgid == group or tree.get(pid) == start)]
        if not alive or time.monotonic() > deadline:
            return [f"{pid}: {cmdline(pid)}" for pid in alive]
        time.sleep(0.05)  # polling /proc: there is no event for another process's death


def kill_group_checked(proc: subprocess.Popen[bytes]) -> list[str]:
    tree = descendants(proc.pid)
    kill_group(proc)
    return left_behind(proc.pid, tree)


def evaluating(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    """A `ready` for wait_for: the experiment's eval.py is running (in the sandbox)."""
    return lambda: any(" eval.py " in cmdline(pid) for pid in descendants(proc.pid))


def start_k(folder: Path, model: str, loop: int, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([RATCHET, "run", str(folder), "--model", model, "--loop", str(loop),
                             "--parallel", str(K)],
                            cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(proc: subprocess.Popen[bytes], ready: Callable[[], bool], limit: float) -> bool:
    """Until `ready()` or the run ended; True if the run is still going."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)  # polling files and a counter: no portable event for either
    return proc.poll() is None


def moved(repo: Path, times: int) -> Callable[[], bool]:
    """A `ready` for wait_for: the branch has moved `times` times since now."""
    seen, moves = [branch_head(repo)], [0]

    def ready() -> bool:
        now = branch_head(repo)
        if now and now != seen[0]:
            seen[0], moves[0] = now, moves[0] + 1
        return moves[0] >= times

    return ready


def check_attempts(folder: Path, repo: Path, written: dict[str, str]) -> None:
    """With K in flight: every attempt.json names its own folder's number; none written by
    an earlier run is rewritten (numbering only grows); each Accept commit's attempt once."""
    runs = folder / "runs"
    for path in runs.glob("*/attempt.json"):
        data = json.loads(path.read_text())
        assert data["iteration"] == int(path.parent.name), path
    for rel, text in written.items():
        assert (runs / rel).read_text() == text, f"runs/{rel} was written twice"
    rows = [json.loads(line.split("Ratchet-Row: ", 1)[1]) for line in git(
        repo, "log", "--format=%(trailers:key=Ratchet-Row,valueonly=false)").splitlines()
        if line.startswith("Ratchet-Row: ")]
    numbers = [r["iteration"] for r in rows]
    assert len(numbers) == len(set(numbers)), f"an attempt number accepted twice: {numbers}"
    for n in numbers:  # a winner's attempt was finished, or cut by the kill right after
        record = runs / f"{n:04d}" / "attempt.json"
        if record.exists():
            assert json.loads(record.read_text())["status"].startswith("accepted"), n


def attempt_records(folder: Path) -> dict[str, str]:
    runs = folder / "runs"
    return {f"{p.parent.name}/{p.name}": p.read_text() for p in runs.glob("*/attempt.json")}


@pytest.mark.slow
def test_sigkill_with_four_in_flight_then_resume_loses_no_winner(exp_repo,
                                                                 tmp_path: Path) -> None:
    folder = exp_repo("fib", cases=["fib18"])
    repo = folder.parents[1]
    fastest = reply(slow_fib(ITERS[-1]), f"burn {ITERS[-1]} steps")
    rng = random.Random(RNG_SEED + K)
    log = tmp_path / "ratchet.log"
    kills = {"random": 0, "after_commit": 0, "four_out": 0}
    limit = 0.0
    snapshots: dict[str, str] = {}
    written: dict[str, str] = {}
    survivors: list[str] = []
    with FakeModelServer(script(), default_text=fastest, delay=LATENCY) as srv:
        model = f"openai-compatible:fake@{srv.openai_base_url}"
        for round_no in range(K_KILLS):
            proc = start_k(folder, model, len(script()), log)
            if round_no % 3 == 2:  # right after the branch moved once or twice
                kind, ready = "after_commit", moved(repo, rng.choice([1, 2]))
            elif round_no % 3 == 1:  # the moment four requests are out at once
                kind, ready = "four_out", lambda: srv.in_flight >= K
            else:
                kind, ready, limit = "random", lambda: False, rng.uniform(0.5, 4.0)
            if not wait_for(proc, ready, limit if kind == "random" else 60):
                break  # the run finished the whole script before the kill point
            survivors += kill_group_checked(proc)
            kills[kind] += 1
            parse_all_state(folder)
            resume = subprocess.run([RATCHET, "run", str(folder), "--model", model, "--until",
                                     "0", "--parallel", str(K)],
                                    cwd=folder, capture_output=True, text=True, timeout=120)
            assert resume.returncode == 0, resume.stdout + resume.stderr
            check_resumed(folder, repo, snapshots, in_order=False)
            check_attempts(folder, repo, written)
            snapshots.update(snapshot(folder))
            written.update(attempt_records(folder))
        final = subprocess.run([RATCHET, "run", str(folder), "--model", model, "--loop",
                                str(len(script())), "--parallel", str(K)],
                               cwd=folder, capture_output=True, text=True, timeout=600)
        peak = srv.peak_in_flight
    assert final.returncode == 0, final.stdout + final.stderr + log.read_text()[-3000:]
    figures = check_resumed(folder, repo, snapshots, in_order=False)
    check_attempts(folder, repo, written)
    sc = json.loads((folder / "SCORES.json").read_text())
    best = (folder / "winners" / sc["best_commit"] / "candidate.py").read_text()
    assert best == slow_fib(ITERS[-1]), best
    assert peak == K, f"at most {peak} requests were ever out at once"
    assert not survivors, f"processes of a killed run left behind: {survivors}"
    print(f"\nfault injection at --parallel {K}: kills {kills}, accepted winners"
          f" {figures['winners']}, lost 0, duplicated 0, left behind 0")
    assert sum(kills.values()) >= K_KILLS - 1, kills


@pytest.mark.slow
def test_sigkill_during_an_evaluation_leaves_no_process_behind(exp_repo,
                                                               tmp_path: Path) -> None:
    folder = exp_repo("fib", cases=["fib18"])
    with FakeModelServer([reply(slow_fib(k), f"burn {k} steps") for k in (16000, 4000)],
                         default_text="no code", delay=LATENCY) as srv:
        model = f"openai-compatible:fake@{srv.openai_base_url}"
        proc = start_k(folder, model, 8, tmp_path / "ratchet.log")
        try:
            assert wait_for(proc, evaluating(proc), 120), "no evaluation before the run ended"
            survivors = kill_group_checked(proc)
        finally:
            kill_group(proc)
    assert not survivors, f"processes of a killed run left behind: {survivors}"


@pytest.mark.slow
def test_ctrl_c_with_four_in_flight_records_them_as_interrupted(exp_repo,
                                                               tmp_path: Path) -> None:
    folder = exp_repo("fib", cases=["fib18"])
    repo = folder.parents[1]
    replies = [reply(slow_fib(k), f"burn {k} steps") for k in (16000, 4000, 1000, 250)]
    with FakeModelServer(replies, default_text="no code, still thinking",
                         delay=LATENCY) as srv:
        model = f"openai-compatible:fake@{srv.openai_base_url}"
        proc = subprocess.Popen([RATCHET, "run", str(folder), "--model", model, "--loop", "400",
                                 "--parallel", str(K)],
                                cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        head = branch_head(repo)
        # a winner is in, and four requests are out
        running = wait_for(proc, lambda: branch_head(repo) != head and srv.in_flight >= K, 120)
        assert running, "run ended before a winner and four requests in flight"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=120)
    text = out.decode() + err.decode()
    assert proc.returncode == 130, text
    assert "interrupted (Ctrl-C)" in text and "Traceback" not in text, text
    assert "scoreboard:" in text
    parse_all_state(folder)
    assert not list(folder.rglob(".*.tmp")), "half-written temp files left behind"
    check_resumed(folder, repo, {}, in_order=False)
    check_attempts(folder, repo, {})
    records = {p.parent.name: json.loads(p.read_text())
               for p in (folder / "runs").glob("*/attempt.json")}
    begun = sorted(p.name for p in (folder / "runs").iterdir())
    assert sorted(records) == begun, "an attempt begun but never recorded"
    cut = [n for n, r in records.items() if r["status"] == "interrupted"]
    assert len(cut) >= K, f"the {K} requests in flight were not all recorded: {cut}"
    assert all(r["message"] == "interrupted by Ctrl-C" for n, r in records.items() if n in cut)
    sc = json.loads((folder / "SCORES.json").read_text())
    assert sc["counts"]["attempts"] == len(records)
    assert not (folder / ".ratchet.lock.holder").exists()


def thread_state(tid: int) -> tuple[str, int]:
    """(state, voluntary context switches) of one of our threads, from /proc."""
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return fields["State"].split()[0], int(fields["voluntary_ctxt_switches"])


def test_ctrl_c_while_the_writer_waits_for_the_guard_leaves_it_held() -> None:
    """Ctrl-C can land while the writer waits to take the guard back from a stage thread
    (lock waits are interruptible). It must unwind holding the guard: abandon_attempt
    records every attempt in flight and `with s.guard` lets go at the end, both assuming it
    holds it; else they race the stage thread, and release the stage thread's hold."""
    from ratchetloop.loop import Guard

    guard = Guard()
    main = threading.main_thread()
    holding, leaving, unwound = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def stage() -> None:
        try:
            with guard:
                holding.set()
                leaving.wait()  # the writer's next wait is for the guard
                state, switches = thread_state(main.native_id or 0)
                while state != "S":  # polling /proc: no event says "blocked in a wait"
                    time.sleep(0.001)
                    state, switches = thread_state(main.native_id or 0)
                signal.pthread_kill(main.ident or 0, signal.SIGINT)
                # it unwound, or it blocked again (one more voluntary switch: waiting for
                # the guard, or for the GIL on its way there); waiting for two more hung
                # when the signal woke it straight back into one wait
                deadline = time.monotonic() + 30
                while not unwound.is_set():
                    state, now = thread_state(main.native_id or 0)
                    if state == "S" and now > switches:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("the writer neither unwound nor waited again")
                    time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    worker = threading.Thread(target=stage)
    guard.__enter__()
    held = False
    try:
        with guard.released():
            worker.start()
            holding.wait()
            leaving.set()
    except KeyboardInterrupt:
        held = guard._owner == threading.get_ident()
    finally:
        unwound.set()
        worker.join()
        if held:
            guard.__exit__()
    assert held, "Ctrl-C during the wait left the writer unwinding without the guard"
    assert not errors, errors


# ------------------------------------------------------------------ git's lock files
#
# A hook or editor that git runs while it holds index.lock tells the test it is there (a line
# on the `ready` fifo) and then blocks reading the `release` fifo, which the test holds open
# read-write: it returns when the test closes that, or dies with its process group.

HOLD = """#!/bin/sh
echo ready > "$RL_READY"
cat "$RL_RELEASE" > /dev/null
if [ -n "$1" ] && [ -f "$1" ]; then echo "user's own change" > "$1"; fi
"""


class Holder:
    """Fifos and a script for git to run (as GIT_EDITOR or core.fsmonitor) that blocks."""

    def __init__(self, tmp: Path) -> None:
        self.ready, self.release = tmp / "ready", tmp / "release"
        os.mkfifo(self.ready)
        os.mkfifo(self.release)
        self.script = tmp / "hold.sh"
        self.script.write_text(HOLD)
        self.script.chmod(0o755)
        self.release_fd = os.open(self.release, os.O_RDWR)  # never blocks on Linux
        self.env = {**os.environ, **GIT_ENV, "RL_READY": str(self.ready),
                    "RL_RELEASE": str(self.release)}

    def wait_ready(self, timeout: float = 60) -> None:
        fd = os.open(self.ready, os.O_RDONLY | os.O_NONBLOCK)
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
            assert readable and os.read(fd, 64) == b"ready\n", "git never reached the script"
        finally:
            os.close(fd)

    def let_go(self) -> None:
        if self.release_fd >= 0:
            os.close(self.release_fd)
            self.release_fd = -1


def markers(repo: Path) -> list[Path]:
    return list((repo / ".git").glob("ratchetloop-commit.*"))


def test_a_users_commit_waiting_for_its_editor_keeps_its_lock(fib: Path, tmp_path: Path) -> None:
    """git commit -a holds index.lock with no descriptor open while the editor runs."""
    from ratchetloop import gitops
    from ratchetloop.errors import RatchetError

    repo = fib.parents[1]
    hold = Holder(tmp_path)
    (repo / "README.md").write_text("edited by the user\n")
    user = subprocess.Popen(["git", "commit", "-a"], cwd=repo, text=True,
                            env={**hold.env, "GIT_EDITOR": str(hold.script)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        hold.wait_ready()  # the user is in the editor now
        lock = repo / ".git" / "index.lock"
        long_ago = time.time() - 600  # and has been typing for ten minutes
        os.utime(lock, (long_ago, long_ago))
        inode = lock.stat().st_ino
        (fib / "candidate.py").write_text(ITERATIVE)
        with pytest.raises(RatchetError, match=r"index\.lock exists and is not the loop's to "
                                               r"remove \(git is running in"):
            gitops.commit_paths(repo, [fib / "candidate.py"], "Accept too early", lock_wait=0)
        assert lock.stat().st_ino == inode  # the user's lock, untouched
    finally:
        hold.let_go()
        out, err = user.communicate(timeout=60)
    assert user.returncode == 0, out + err
    assert git(repo, "log", "-1", "--format=%s").strip() == "user's own change"
    gitops.commit_paths(repo, [fib / "candidate.py"], "Accept after the user")
    assert git(repo, "log", "-2", "--format=%s").splitlines() == [
        "Accept after the user", "user's own change"]
    assert markers(repo) == []


def test_a_loop_killed_mid_commit_leaves_a_lock_the_next_commit_clears(
        fib: Path, tmp_path: Path) -> None:
    from ratchetloop import gitops

    repo = fib.parents[1]
    hold = Holder(tmp_path)
    locked_only = tmp_path / "hold-when-locked.sh"  # blocks only once index.lock is held
    locked_only.write_text(f"#!/bin/sh\n[ -e .git/index.lock ] || exit 1\nexec {hold.script}\n")
    locked_only.chmod(0o755)
    git(repo, "config", "core.fsmonitor", str(locked_only))  # runs inside `git add`
    new_file = fib / "winners" / "abc1234" / "note.txt"  # untracked: commit_paths adds it
    new_file.parent.mkdir(parents=True)
    new_file.write_text("a winner's note\n")
    loop = subprocess.Popen(
        [PYTHON, "-c", "import sys\nfrom pathlib import Path\nfrom ratchetloop import gitops\n"
         "gitops.commit_paths(Path(sys.argv[1]), [Path(sys.argv[2])], 'never made')",
         str(repo), str(new_file)],
        env=hold.env, start_new_session=True)
    try:
        hold.wait_ready()  # the loop's `git add` holds index.lock
    finally:
        kill_group(loop)  # the loop and its git die together, as on a power cut
        hold.let_go()
    lock = repo / ".git" / "index.lock"
    assert lock.exists() and len(markers(repo)) == 1  # what the dead pair left
    git(repo, "config", "--unset", "core.fsmonitor")
    sha = gitops.commit_paths(repo, [new_file], "Commit after a killed loop")
    assert git(repo, "log", "-1", "--format=%h %s").strip() == f"{sha} Commit after a killed loop"
    assert not lock.exists() and markers(repo) == []


def test_a_lock_the_loop_did_not_make_is_never_removed(fib: Path) -> None:
    """Even one whose writer is long gone: the user is told to remove it."""
    from ratchetloop import gitops
    from ratchetloop.errors import RatchetError

    repo = fib.parents[1]
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    (fib / "candidate.py").write_text(ITERATIVE)
    with pytest.raises(RatchetError, match=r"no ratchet commit was under way when it was "
                                           r"made\)\. .* remove the file and run again"):
        gitops.commit_paths(repo, [fib / "candidate.py"], "Accept", lock_wait=0)
    assert lock.exists()
