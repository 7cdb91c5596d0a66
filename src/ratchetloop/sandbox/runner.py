"""The parent side: start the init inside the namespaces and cgroups, wait, clean up.

`run()` never raises for anything the child does; a sandbox that cannot be set up is
reported in `SandboxResult.error` and the command does not run. `run_with()` is the whole of
it with the starting, waiting and killing left to a `Launcher`: `_Cold` here (unshare and a
new init per run), warm.py's for a fork of a pre-started init; both share the config,
limits, layers and result built here. Waits are events (pidfds), never sleep-polls.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import resource
import select
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from . import cgroups, probe
from .env import RESULT_FD_VAR, child_env, homes

RESULT_CAP = 16 << 20  # bytes of SandboxResult.result kept; beyond: result_truncated
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: preexec_fn calls it


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 900  # RLIMIT_CPU, per process
    memory_bytes: int | None = 4 << 30  # memory cgroup (RSS + cache + tmpfs); ASan-safe
    file_bytes: int = 256 << 20  # RLIMIT_FSIZE: largest file (stdout/stderr files too)
    open_files: int = 256
    processes: int = 512  # pids cgroup (RLIMIT_NPROC for non-root callers)
    output_bytes: int = 1 << 20  # returned per stream (head and tail kept)
    tmp_bytes: int = 512 << 20  # size of the private /tmp tmpfs
    # Total disk the run may write in its work dir: with the mount namespace the run works
    # on a private view of it (overlayfs or a tmpfs copy, charged to the memory cgroup)
    # that is discarded at exit. None: the real dir, read-write (everything stays).
    work_bytes: int | None = 1 << 30
    address_space_bytes: int | None = None  # RLIMIT_AS; breaks ASan, off by default
    artefact_bytes: int = 8 << 20  # total size of the declared artefacts copied back


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
    oom_killed: bool = False
    error: str | None = None  # the sandbox itself failed to set up (not the child's fault)
    dropped_env: list[str] = field(default_factory=list)
    result: bytes | None = None  # what the command wrote on fd 3 (result_channel=True)
    result_truncated: bool = False
    cpu_seconds: float | None = None  # user+system CPU of the whole tree, from outside
    peak_rss_mb: float | None = None  # the largest RSS any process of the tree reached (MiB)
    warm: bool = False  # ran in a warm sandbox (Warm.run), not a cold start

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def keep_paths(run_env: Mapping[str, str], argv: Sequence[str], extra: Sequence[Path],
               homes: Sequence[str]) -> list[str]:
    """Paths that must stay reachable (read-only) although $HOME is hidden.

    Never a home itself or one of its ancestors (that would undo the hiding): argv[0]'s
    directory is replaced by the file itself then, and other such paths are dropped.
    """
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    paths.update(p for p in run_env.get("PYTHONPATH", "").split(os.pathsep) if p)
    paths.update(pth_dirs())
    if argv and os.path.isabs(argv[0]):
        exe = os.path.realpath(argv[0])
        parent = os.path.dirname(exe)
        paths.add(exe if any(_under(h, parent) for h in homes) else parent)
    paths.update(str(p) for p in extra)
    real = {os.path.realpath(p) for p in paths if p and os.path.exists(p)}
    real = {p for p in real if not any(_under(h, p) for h in homes)}
    return sorted(p for p in real if not any(q != p and _under(p, q) for q in real))


@functools.cache
def pth_dirs() -> tuple[str, ...]:
    """Directories the interpreter's site-packages add to its path through .pth files: an
    editable install's source, or another environment's packages. They must stay reachable
    like the environment itself, or a sandboxed python cannot import what ours can (a
    checkout or venv under /tmp is hidden by the private /tmp otherwise)."""
    found: list[str] = []
    for site_dir in site.getsitepackages():
        for pth in sorted(Path(site_dir).glob("*.pth")):
            try:
                lines = pth.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                folder = os.path.join(site_dir, line)  # an absolute line stays as it is
                if os.path.isdir(folder):
                    found.append(os.path.realpath(folder))
    return tuple(found)


def rlimit_values(limits: Limits, cgroup: Group | None) -> list[tuple[int, int]]:
    """(resource, value) pairs the whole tree runs under (soft = hard)."""
    out = [(resource.RLIMIT_CPU, limits.cpu_seconds)]
    if limits.address_space_bytes is not None:
        out.append((resource.RLIMIT_AS, limits.address_space_bytes))
    out += [(resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_NOFILE, limits.open_files),
            (resource.RLIMIT_CORE, 0)]
    if os.geteuid() != 0 and (cgroup is None or "pids" not in cgroup.used):
        out.append((resource.RLIMIT_NPROC, limits.processes + _count_own_processes()))
    return out


def _limit_child(values: list[tuple[int, int]], cgroup: cgroups.RunGroup | None,
                 parent: int | None = None, death: int = signal.SIGKILL) -> None:
    """preexec_fn: die with the thread that started us (`death` when it does: a SIGKILLed
    loop must not leave an evaluation running on, timing against the run that resumes),
    join the cgroups, then set rlimits (inherited by the whole tree)."""
    if parent is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(death), 0, 0, 0)
        if os.getppid() != parent:  # it died before the prctl
            os._exit(125)
    if cgroup is not None:
        cgroup.join_self()
    for which, value in values:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass


def _count_own_processes() -> int:
    uid = os.getuid()
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def scratch_file(in_memory: bool) -> IO[bytes]:
    """An unlinked read-write file for a run's stdout, stderr or result.

    In memory (memfd) when the run's memory cgroup bounds what it can write there (the
    pages are charged to the writer; RLIMIT_FSIZE caps each file either way): creating
    and dropping a temp file on a journalled /tmp costs about a millisecond per run.
    """
    if in_memory:
        try:
            return open(os.memfd_create("ratchet-sandbox", os.MFD_CLOEXEC), "w+b")
        except (AttributeError, OSError):
            pass
    return tempfile.TemporaryFile()


def _read_capped(fh: IO[bytes], cap: int) -> tuple[str, bool]:
    """The whole stream if it fits, else its head and tail (a result line is usually last)."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    if size <= cap:
        return fh.read().decode("utf-8", errors="replace"), False
    head = fh.read(cap // 2)
    fh.seek(size - cap // 2)
    tail = fh.read()
    note = f"\n[... ratchet sandbox: {size - len(head) - len(tail)} bytes cut ...]\n".encode()
    return (head + note + tail).decode("utf-8", errors="replace"), True


def _read_status(fd: int) -> tuple[str, int, float | None, float | None] | None:
    """The init's "<kind> <n> [cpu <seconds>] [rss <KiB>]" line, if it wrote one:
    (kind, n, cpu seconds, peak RSS in MiB)."""
    os.set_blocking(fd, False)
    try:
        words = os.read(fd, 256).decode(errors="replace").split()
    except OSError:
        return None
    if len(words) < 2 or not words[1].lstrip("-").isdigit():
        return None
    pairs = dict(zip(words[2::2], words[3::2], strict=False))
    cpu, rss = _number(pairs.get("cpu")), _number(pairs.get("rss"))
    return words[0], int(words[1]), cpu, None if rss is None else rss / 1024


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


FOLLOW_PERIOD = 0.25  # s between looks at the result channel for new lines (a display's pace)


@contextmanager
def _follow(fd: int | None, on_line: Callable[[bytes], None] | None) -> Iterator[None]:
    """While the command runs, hand each complete new line of the result file to `on_line`
    (read with pread, so the file is read again from the start afterwards). For a live
    view only: the result file is a plain file with no event to wait on, so a thread looks
    at it at FOLLOW_PERIOD; nothing decides on what it sees."""
    if fd is None or on_line is None:
        yield
        return
    stop = threading.Event()

    def follow() -> None:
        offset, pending = 0, b""
        while True:
            done = stop.wait(FOLLOW_PERIOD)  # one last look after the command ended:
            try:  # the lines written since the previous look are heard too
                chunk = os.pread(fd, 1 << 16, offset)
            except OSError:
                return
            offset += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                try:
                    on_line(line)
                except Exception:  # noqa: BLE001 - a display fault never stops a run
                    pass
            if done or offset > RESULT_CAP:
                return

    thread = threading.Thread(target=follow, name="ratchet-follow-result", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _kill_tree(proc: subprocess.Popen[bytes], cgroup: Group | None) -> None:
    """Kill everything the run started, however it tried to escape; wait until it is gone."""
    if proc.poll() is None:
        # Without a pid namespace the init kills its own leftovers on SIGTERM; with one,
        # unshare's death takes the namespace's init (and so the namespace) with it.
        try:
            proc.send_signal(signal.SIGTERM)
            _wait_exit(proc, 0.5)
        except OSError:
            pass
    _killpg(proc.pid)
    if cgroup is not None:
        cgroup.kill_all(time.monotonic() + 10)
    try:
        proc.kill()
    except OSError:
        pass
    proc.wait()
    _killpg(proc.pid)
    if cgroup is not None:
        cgroup.kill_all(time.monotonic() + 10)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for `proc` to exit; True if it is still running after `timeout` seconds.

    Woken by the kernel (a pidfd) the moment it exits: Popen.wait(timeout) polls with
    sleeps of up to 50 ms, which was most of what a short run cost.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfds (old kernel) or already reaped
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return True
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            poller.poll(max(1, math.ceil(left * 1000)))
        return False
    finally:
        os.close(fd)


class LaunchUnavailable(Exception):
    """The launcher could not start anything (nothing ran): the caller may go the cold way."""


class Group(Protocol):
    """The cgroups one run is accounted and killed in (cgroups.RunGroup, or a warm
    sandbox's share of its long-lived groups)."""

    used: dict[str, str]
    problems: list[tuple[str, str]]

    def layers(self) -> list[str]: ...

    def kill_all(self, deadline: float) -> bool: ...

    def oom_killed(self) -> bool: ...

    def cpu_seconds(self) -> float | None: ...

    def remove(self) -> None: ...


class Launcher(Protocol):
    """How the init gets started, waited for and killed: `_Cold` (unshare + a new init
    process per run) or warm.py's launcher (a fork of a pre-started init)."""

    def group(self, limits: Limits) -> Group: ...

    def start(self, cfg: dict[str, Any], plan: Plan, *, cwd: Path, out: IO[bytes],
              err: IO[bytes], status_w: int, result_fd: int | None, limits: Limits,
              cgroup: Group | None, timeout: float) -> str | None: ...

    def wait(self, timeout: float) -> bool: ...

    def kill(self, cgroup: Group | None) -> None: ...

    @property
    def returncode(self) -> int | None: ...


@dataclass
class Plan:
    """What a run will use here: namespaces, work view, layers, environment."""

    ns: dict[str, bool]
    mount: bool
    work_mode: str
    layers: list[str]
    run_env: dict[str, str]
    dropped: list[str]


def plan(limits: Limits, env: Mapping[str, str] | None, isolate: bool,
         result_channel: bool) -> Plan:
    """Namespaces and mount setup as probed (cached), the layers they give, the env."""
    ns = probe.namespaces() if isolate else dict(probe.NO_NAMESPACES)
    setup = probe.mount_setup() if ns["mount"] else None
    mount = setup is not None and setup.ok
    # "real": the real dir, read-write (work_bytes=None, or no mount namespace at all)
    work_mode = setup.mode if setup and setup.mode and limits.work_bytes is not None else "real"
    layers = ["session", "rlimits", "env-allowlist", "output-cap", "init-reaper"]
    layers += [f"{k}-namespace" for k in ("user", "pid", "net", "mount") if ns[k]
               and (k != "mount" or mount)]
    if ns["ipc"] and ns["uts"]:
        layers.append("ipc/uts-namespaces")
    if mount:
        layers += ["home-hidden", "keys-hidden"]
        if limits.work_bytes is not None:  # None: the real dir, read-write
            layers += ["work-dir", "disk-quota"]
    run_env, dropped = child_env(env)
    if mount:
        run_env["TMPDIR"] = "/tmp"
        run_env["HOME"] = "/tmp"
    if result_channel:
        run_env[RESULT_FD_VAR] = "3"
    return Plan(ns, mount, work_mode, layers, run_env, dropped)


class _Cold:
    """A fresh `unshare` + init process per run (what `run()` does)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroup: cgroups.RunGroup | None = None

    def group(self, limits: Limits) -> Group:
        self.cgroup = cgroups.RunGroup(limits.memory_bytes, limits.processes,
                                       cgroups.available())
        return self.cgroup

    def start(self, cfg: dict[str, Any], plan: Plan, *, cwd: Path, out: IO[bytes],
              err: IO[bytes], status_w: int, result_fd: int | None, limits: Limits,
              cgroup: Group | None, timeout: float) -> str | None:
        wrapped = probe.wrapper(plan.ns, mount=plan.mount)
        cmd = wrapped + probe.init_argv(cfg)
        fds = (status_w,) if result_fd is None else (status_w, result_fd)
        values = rlimit_values(limits, cgroup)
        joined = self.cgroup
        # unshare --kill-child passes a SIGKILL on to the init (its namespace dies with it);
        # unshare ignores SIGTERM. A bare init ends its tree on SIGTERM.
        parent, death = os.getpid(), signal.SIGKILL if wrapped else signal.SIGTERM
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env={"PATH": plan.run_env.get("PATH", "/usr/bin:/bin")},
                start_new_session=True, pass_fds=fds,
                preexec_fn=lambda: _limit_child(values, joined, parent, death),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"could not start the sandbox: {exc}"
        return None

    def wait(self, timeout: float) -> bool:
        return self.proc is not None and _wait_exit(self.proc, timeout)

    def kill(self, cgroup: Group | None) -> None:
        if self.proc is not None:
            _kill_tree(self.proc, cgroup)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    limits: Limits = Limits(),
    env: Mapping[str, str] | None = None,
    ro_paths: Sequence[Path] = (),
    isolate: bool = True,
    result_channel: bool = False,
    artefacts: Sequence[str] = (),
    readonly_inside: Sequence[str] = (),
    on_result_line: Callable[[bytes], None] | None = None,
) -> SandboxResult:
    """Run `argv` contained; never raises for anything the child does.

    With the mount namespace the command works on a private, size-capped view of `cwd`
    that is discarded at exit: only top-level regular files matching `artefacts` (fnmatch,
    plain names) are copied back. `readonly_inside` (paths relative to `cwd`) stay
    read-only inside the run. `ro_paths` stay readable even under the hidden $HOME.
    `result_channel=True` gives the command fd 3 (RATCHET_RESULT_FD=3); what it writes
    there comes back as `SandboxResult.result`; `on_result_line` also hears each complete
    line written there while the command runs (a live view's progress lines).
    `isolate=False` skips namespaces and cgroups (session, rlimits, env scrub and the init
    remain).
    """
    return run_with(_Cold(), argv, cwd=cwd, timeout=timeout, limits=limits, env=env,
                    ro_paths=ro_paths, isolate=isolate, result_channel=result_channel,
                    artefacts=artefacts, readonly_inside=readonly_inside,
                    on_result_line=on_result_line)


def run_with(
    launch: Launcher,
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    limits: Limits,
    env: Mapping[str, str] | None,
    ro_paths: Sequence[Path],
    isolate: bool,
    result_channel: bool,
    artefacts: Sequence[str],
    readonly_inside: Sequence[str],
    on_result_line: Callable[[bytes], None] | None = None,
) -> SandboxResult:
    """`run()` with a given launcher: everything but starting/waiting/killing is shared,
    so the cold and the warm path build the same config, limits and result."""
    start = time.monotonic()
    p = plan(limits, env, isolate, result_channel)
    layers = list(p.layers)
    cgroup = None
    if isolate:
        cgroup = launch.group(limits)
        layers += cgroup.layers()
    status_r, status_w = os.pipe()
    hidden_homes = homes()
    timed_out = False
    error: str | None = None
    status: tuple[str, int, float | None, float | None] | None = None
    result: bytes | None = None
    result_truncated = False
    try:
        in_memory = cgroup is not None and "memory" in cgroup.used
        with scratch_file(in_memory) as out, scratch_file(in_memory) as err, \
                scratch_file(in_memory) as result_file:
            keep = keep_paths(p.run_env, argv, ro_paths, hidden_homes)
            cfg = probe.init_config(
                argv, cwd, p.run_env, mount=p.mount, pid_ns=p.ns["pid"],
                work_mode=p.work_mode, keep=keep,
                status_fd=status_w, result_fd=result_file.fileno() if result_channel else None,
                readonly=readonly_inside, artefacts=artefacts, tmp_bytes=limits.tmp_bytes,
                work_bytes=limits.work_bytes, artefact_bytes=limits.artefact_bytes,
                # The init enforces the wall clock too (a little later than we do), so the
                # tree dies on time even if this process is killed and never cleans up.
                deadline=timeout + 5.0)
            try:
                try:
                    error = launch.start(
                        cfg, p, cwd=cwd, out=out, err=err, status_w=status_w,
                        result_fd=result_file.fileno() if result_channel else None,
                        limits=limits, cgroup=cgroup, timeout=timeout)
                finally:
                    os.close(status_w)
                if error is None:
                    with _follow(result_file.fileno() if result_channel else None,
                                 on_result_line):
                        timed_out = launch.wait(timeout)
            except BaseException:  # Ctrl-C in the loop: the tree must not outlive it
                launch.kill(cgroup)
                raise
            launch.kill(cgroup)
            status = _read_status(status_r)
            stdout, t1 = _read_capped(out, limits.output_bytes)
            stderr, t2 = _read_capped(err, limits.output_bytes)
            if result_channel:
                result_file.seek(0)
                result = result_file.read(RESULT_CAP + 1)
                result_truncated = len(result) > RESULT_CAP
                result = result[:RESULT_CAP]
    finally:
        os.close(status_r)
        oom = cgroup.oom_killed() if cgroup is not None else False
        cgroup_cpu = cgroup.cpu_seconds() if cgroup is not None else None
        if cgroup is not None:
            cgroup.remove()
            for function, why in cgroup.problems:
                probe.record_failure(f"cgroup-{function}", why)
    rc = launch.returncode
    cpu: float | None = None
    rss: float | None = None
    if status is not None:
        kind, value, cpu, rss = status
        if kind == "exit":
            rc = value
        elif kind == "signal":
            rc = -value
        elif kind == "error":
            error = stderr.strip().splitlines()[-1] if stderr.strip() else "sandbox init failed"
            rc = None
    return SandboxResult(
        returncode=None if timed_out else rc,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        signal=-rc if rc is not None and rc < 0 else None,
        wall_seconds=time.monotonic() - start,
        output_truncated=t1 or t2,
        layers=layers,
        oom_killed=oom,
        error=error,
        dropped_env=p.dropped,
        result=result,
        result_truncated=result_truncated,
        # The init's count after reaping everything; the cgroup's when the init could not
        # report (timeout, killed), which also includes the init's own few milliseconds.
        cpu_seconds=cpu if cpu is not None else cgroup_cpu,
        peak_rss_mb=rss,
    )
