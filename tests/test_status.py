"""`ratchet status`: read from the run lock and .ratchet.status.json, against a real run.

The run is a real `ratchet run` subprocess. It is held at a known point without sleeps:
the test holds the host's benchmark lock (private to the test, see conftest), so the run
waits in a known phase until the test lets go.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ITERATIVE, RATCHET, reply, run_ratchet, slow_fib, write_replay

from ratchetloop import benchlock
from ratchetloop.status import read_status

DEADLINE = 120.0


def wait_for(proc: subprocess.Popen[str], condition: Callable[[], Any]) -> Any:
    """Until `condition()` is truthy: between looks, wait for the process to end (an
    event) for a moment; fail if it ends first or the deadline passes."""
    waited = 0.0
    while waited < DEADLINE:
        value = condition()
        if value:
            return value
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            waited += 0.05
            continue
        out, err = proc.communicate()
        pytest.fail(f"the run ended before the condition held: {out}\n{err}")
    pytest.fail("deadline passed")


def phase_of(folder: Path, pid: int, prefix: str) -> dict[str, Any] | None:
    st = read_status(folder)
    if st and st.get("pid") == pid and str(st.get("phase", "")).startswith(prefix):
        return st
    return None


def start_run(folder: Path, model: str, loops: int) -> subprocess.Popen[str]:
    return subprocess.Popen([RATCHET, "run", str(folder), "--model", model, "--loop",
                             str(loops)], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def status_lines(folder: Path, *args: str) -> str:
    proc = run_ratchet("status", *args, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_status_of_a_real_run_while_it_runs_and_after(fib: Path) -> None:
    model = write_replay(fib.parent.parent / "replay.json",
                         [reply(ITERATIVE, note="iterate"), reply(slow_fib(3), note="slow")])
    assert "no run recorded" in status_lines(fib, "fib")
    # measure the seed first (`--until 0` runs no iteration), so that with the lock held the
    # next run stops at its first evaluation -- never racing the test for the lock between
    # the seed and the first iteration
    seeded = run_ratchet("run", str(fib), "--model", model, "--until", "0", cwd=fib)
    assert seeded.returncode == 0, seeded.stderr
    with benchlock.bench_lock("test-gate"):
        proc = start_run(fib, model, 2)
        st = wait_for(proc, lambda: phase_of(fib, proc.pid, "evaluating"))
        out = status_lines(fib, "fib")
        assert f"fib: running (pid {proc.pid}, replay:replay.json, elapsed 0:" in out, out
        assert f"iteration {st['k']}/2 (attempt #{st['iteration']}): evaluating" in out, out
        assert st["k"] == 1 and "best: " in out and "usage: 0 tokens, $0.000000" in out
        assert f"fib: running (pid {proc.pid}" in status_lines(fib.parent.parent)  # the list
    out_, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    out = status_lines(fib, "fib")
    assert out.startswith(f"fib: not running; the last run (pid {proc.pid}) stopped at ")
    assert "completed 2 iterations" in out and "2 of 2 iterations done" in out
    assert "vs seed" in out  # best so far, from the accepted attempt


def test_a_killed_run_is_reported_as_stopped_without_finishing(fib: Path) -> None:
    model = write_replay(fib.parent.parent / "replay.json", [reply(ITERATIVE)])
    with benchlock.bench_lock("test-gate"):
        proc = start_run(fib, model, 1)
        wait_for(proc, lambda: phase_of(fib, proc.pid, "measuring seed baseline"))
        proc.send_signal(signal.SIGKILL)  # our own child; nothing of it runs sandboxed yet
        proc.communicate(timeout=DEADLINE)
    out = status_lines(fib, "fib")
    assert f"not running; the last run (pid {proc.pid}) stopped without finishing" in out
    assert "measuring seed baseline" in out and "last seen at" in out


def test_status_outside_any_project_is_one_line(tmp_path: Path) -> None:
    proc = run_ratchet("status", cwd=tmp_path, env={"RATCHET_ROOT": ""})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no experiments in ") and proc.stderr.count("\n") == 1
