"""Run untrusted work (a candidate's build, validation and timing) in a contained child.

Covered here: a fresh process session/group killed as a whole on timeout, rlimits on CPU
time, address space, file size, open files and core dumps, captured output with a cap, and
an environment allowlist so no API key or token reaches the child.
Not covered yet: see `ratchet doctor` for the layers active on this machine.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 900
    memory_bytes: int | None = None  # RLIMIT_AS breaks ASan; see memory layers below
    file_bytes: int = 256 << 20
    open_files: int = 256
    processes: int = 512
    output_bytes: int = 1 << 20


@dataclass
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    signal: int | None = None
    wall_seconds: float = 0.0
    output_truncated: bool = False
    layers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def safe_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's whole environment: a short allowlist plus what the caller adds."""
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = env.get("TMPDIR", tempfile.gettempdir())
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def _limit_child(limits: Limits) -> None:
    def setl(which: int, value: int) -> None:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass

    setl(resource.RLIMIT_CPU, limits.cpu_seconds)
    if limits.memory_bytes is not None:
        setl(resource.RLIMIT_AS, limits.memory_bytes)
    setl(resource.RLIMIT_FSIZE, limits.file_bytes)
    setl(resource.RLIMIT_NOFILE, limits.open_files)
    setl(resource.RLIMIT_CORE, 0)


def _read_capped(fh, cap: int) -> tuple[str, bool]:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    data = fh.read(cap)
    return data.decode("utf-8", errors="replace"), size > cap


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    limits: Limits = Limits(),
    env: Mapping[str, str] | None = None,
) -> SandboxResult:
    """Run `argv` contained; never raises for anything the child does."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=safe_env(env),
            start_new_session=True,
            preexec_fn=lambda: _limit_child(limits),
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc.pid)
        proc.wait()
        stdout, t1 = _read_capped(out, limits.output_bytes)
        stderr, t2 = _read_capped(err, limits.output_bytes)
    rc = proc.returncode
    return SandboxResult(
        returncode=None if timed_out else rc,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        signal=-rc if rc is not None and rc < 0 else None,
        wall_seconds=time.monotonic() - start,
        output_truncated=t1 or t2,
        layers=["session", "rlimits", "env-allowlist"],
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
