"""The host-wide benchmark lock, exercised with real processes synchronised by pipes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ratchetloop import benchlock
from ratchetloop.errors import RatchetError

# A holder: takes the lock, says so, waits for a line on stdin, releases, says so.
HOLDER = """
import sys
from pathlib import Path
from ratchetloop.benchlock import bench_lock
with bench_lock(sys.argv[2], path=Path(sys.argv[1]),
                on_wait=lambda m: print("waiting", m, flush=True)):
    print("acquired", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def start(lock: Path, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate("\n", timeout=30)
    return out.splitlines()


def test_two_processes_are_serialised_and_the_waiter_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    first = start(lock, "linear")
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "acquired"

    second = start(lock, "attention")
    assert second.stdout is not None
    waiting = second.stdout.readline()
    # It waits instead of entering, and says who is in the way.
    assert waiting.startswith("waiting")
    assert f"pid {first.pid}" in waiting and "experiment linear" in waiting

    assert finish(first) == ["released"]
    assert second.stdout.readline().strip() == "acquired"
    assert finish(second) == ["released"]
    assert benchlock.read_holder(lock)["experiment"] == "attention"  # type: ignore[index]


def test_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    first = start(lock, "linear")
    assert first.stdout is not None and first.stdout.readline().strip() == "acquired"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    with benchlock.bench_lock("next", path=lock, timeout=10) as held:
        assert held == lock
        assert benchlock.read_holder(lock)["pid"] == os.getpid()  # type: ignore[index]


def test_timeout_raises_a_clear_error(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    first = start(lock, "linear")
    assert first.stdout is not None and first.stdout.readline().strip() == "acquired"
    messages: list[str] = []
    try:
        with pytest.raises(RatchetError, match=f"pid {first.pid}"):
            with benchlock.bench_lock("x", path=lock, timeout=0.2, poll_seconds=0.05,
                                      on_wait=messages.append):
                pass
    finally:
        finish(first)
    assert len(messages) == 1 and "experiment linear" in messages[0]


def test_nested_use_in_one_thread_does_not_deadlock(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    with benchlock.bench_lock("outer", path=lock, timeout=5):
        with benchlock.bench_lock("inner", path=lock, timeout=5):
            pass
        assert benchlock.read_holder(lock)["experiment"] == "outer"  # type: ignore[index]


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    inside = threading.Event()
    leave = threading.Event()
    waited: list[str] = []
    entered_second = threading.Event()

    def hold() -> None:
        with benchlock.bench_lock("one", path=lock):
            inside.set()
            leave.wait(30)

    def contend() -> None:
        def on_wait(msg: str) -> None:
            waited.append(msg)
            leave.set()  # only let the holder go once we are known to be blocked

        with benchlock.bench_lock("two", path=lock, on_wait=on_wait, poll_seconds=0.05):
            entered_second.set()

    t1 = threading.Thread(target=hold)
    t1.start()
    assert inside.wait(30)
    t2 = threading.Thread(target=contend)
    t2.start()
    t1.join(30)
    t2.join(30)
    assert entered_second.is_set() and len(waited) == 1


def test_env_var_chooses_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(benchlock.ENV_VAR, str(tmp_path / "x.lock"))
    assert benchlock.lock_path() == tmp_path / "x.lock"
    monkeypatch.delenv(benchlock.ENV_VAR)
    assert benchlock.lock_path().name == "ratchetloop-bench.lock"
