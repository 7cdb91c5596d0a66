"""Host-wide benchmark lock: two timing runs on one machine would corrupt each other.

Proposals may be made in parallel, but every sandboxed eval.py call (build, validation and
timing all load the CPU) takes this lock first. It is an OS file lock (flock via
`filelock`), so a holder that crashes or is killed releases it automatically -- there is no
stale lock to clean up. Who holds it is written next to it, so a waiter can say
"held by pid 1234 (experiment linear) since ..." instead of hanging silently.

Path: $RATCHET_BENCH_LOCK, else <tmpdir>/ratchetloop-bench.lock (tmpdir is /tmp on Linux,
shared by every user of the host). The lock file is created world-writable so other users'
loops can share it; on systems with fs.protected_regular a second user may still be refused
-- then point both at a common path with RATCHET_BENCH_LOCK.

Re-entrant within a thread (an eval inside a benchmark script that already holds it does
not deadlock); separate threads of one process exclude each other like processes do.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import RatchetError

ENV_VAR = "RATCHET_BENCH_LOCK"
_locks: dict[str, FileLock] = {}
_locks_guard = threading.Lock()


def lock_path() -> Path:
    """Where the host-wide lock lives ($RATCHET_BENCH_LOCK overrides)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / "ratchetloop-bench.lock"


def _holder_path(path: Path) -> Path:
    return path.with_name(path.name + ".holder")


def _lock_for(path: Path) -> FileLock:
    """One FileLock object per path, so nesting in one thread re-enters instead of blocking."""
    key = str(path.resolve())
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = FileLock(key, mode=0o666, thread_local=True)
            _locks[key] = lock
        return lock


def read_holder(path: Path | None = None) -> dict | None:
    """The last holder's record (pid, experiment, host, since), or None if unreadable."""
    try:
        data = json.loads(_holder_path(path or lock_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(path: Path | None = None) -> str:
    """A one-line description of who holds the lock, for the waiting message."""
    h = read_holder(path)
    if not h:
        return "another process (holder unknown)"
    what = f"experiment {h.get('experiment') or '?'}"
    return f"pid {h.get('pid')} on {h.get('host')} ({what}, since {h.get('since')})"


def _write_holder(path: Path, experiment: str) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "experiment": experiment,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    holder = _holder_path(path)
    tmp = holder.with_name(f"{holder.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, holder)
    except OSError:  # another user's holder file in a sticky /tmp: info only, not fatal
        tmp.unlink(missing_ok=True)


def _default_notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def bench_lock(
    experiment: str = "",
    *,
    path: Path | None = None,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll_seconds: float = 0.5,
) -> Iterator[Path]:
    """Hold the host-wide benchmark lock for the body; wait (saying for whom) if it is taken.

    `timeout` None waits for ever; otherwise RatchetError after that many seconds.
    `on_wait` receives the waiting message (default: stderr), again whenever the holder
    changes.
    """
    path = path or lock_path()
    notify = on_wait or _default_notice
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock_for(path)
        deadline = None if timeout is None else time.monotonic() + timeout
        announced: str | None = None
        while True:
            try:
                lock.acquire(timeout=0 if announced is None else poll_seconds)
                break
            except Timeout:
                who = describe_holder(path)
                if who != announced:
                    notify(f"waiting for the benchmark lock {path}: held by {who}")
                    announced = who
                if deadline is not None and time.monotonic() >= deadline:
                    raise RatchetError(
                        f"benchmark lock {path} still held by {who} after {timeout:g}s"
                    ) from None
    except PermissionError as exc:
        raise RatchetError(
            f"cannot open the benchmark lock {path} ({exc.strerror}); "
            f"set {ENV_VAR} to a path every ratchet user can write"
        ) from None
    try:
        if lock.lock_counter == 1:
            _write_holder(path, experiment)
        yield path
    finally:
        lock.release()
