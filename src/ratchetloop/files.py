"""Atomic state writes and strict reads: a crash never leaves half a file behind.

Every write is atomic (a temp file renamed over the target), so a killed process leaves the
old file or the new one. `durable=True` (the default) also fsyncs the file and its folder,
so the write survives a power cut too; that costs ~4-8 ms a write, so records that are
views of the state (SCORES.md, MEMORY.md) or history (runs/<n>/) skip it: a power cut may
lose the newest of those, never corrupt them, and the state they derive from is durable."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import RatchetError

M = TypeVar("M", bound=BaseModel)


@contextmanager
def _no_interrupt() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the write is done: they land after, never halfway.

    Deferred at the Python-handler level, not with the signal mask: a mask blocks only the
    calling thread, so the kernel may hand the signal to another thread (a live display's
    refresh thread) and Python would still raise KeyboardInterrupt here, mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])  # now, with the caller's own handler in place


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write to a temp file in the same folder (fsync it when durable), rename over `path`."""
    with _no_interrupt():
        _atomic_write(Path(path), data, durable)


def _atomic_write(path: Path, data: bytes, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600; keep what a plain write gives
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)


def _mode_for(path: Path) -> int:
    """The existing file's permissions, else what open() would give under the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    else:
        text = json.dumps(data, indent=2, sort_keys=False, default=str)
    atomic_write_text(path, text + "\n", durable=durable)


def read_model(path: Path, model: type[M]) -> M:
    """Parse a JSON state file into `model`; a broken file is an error naming it, never reset."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RatchetError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise RatchetError(
            f"{path} is not a valid {model.__name__}: {where}: {err['msg']}"
            " (fix or remove the file; ratchet never overwrites a broken state file)"
        ) from None


def read_text_or_empty(path: Path, limit: int | None = None) -> str:
    """A file's text (at most `limit` bytes, undecodable bytes replaced), or "" when it
    cannot be read: for optional files and logs a missing one must not stop."""
    try:
        with open(path, "rb") as fh:
            return fh.read(-1 if limit is None else limit).decode("utf-8", errors="replace")
    except OSError:
        return ""
