"""One loop per experiment: a lock file whose holder is named in the message to others."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import RatchetError


@contextmanager
def experiment_lock(folder: Path, purpose: str = "run") -> Iterator[None]:
    lock_path = folder / ".ratchet.lock"
    holder_path = folder / ".ratchet.lock.holder"
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RatchetError(f"experiment {folder.name} is busy: {_describe(holder_path)}") from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        holder_path.write_text(json.dumps(holder), encoding="utf-8")
        yield
    finally:
        try:
            holder_path.unlink()
        except FileNotFoundError:
            pass
        lock.release()


def _describe(holder_path: Path) -> str:
    try:
        h = json.loads(holder_path.read_text(encoding="utf-8"))
        return (f"locked by pid {h['pid']} on {h['host']} ({h['purpose']}, since {h['since']});"
                " wait for it or stop it")
    except (OSError, ValueError, KeyError):
        return "locked by another ratchet process"
