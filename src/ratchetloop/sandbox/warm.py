"""A warm sandbox: many runs, one Python start-up. `Warm().run(...)` is `run(...)`.

A cold `run()` starts `unshare` and a new Python init per command (tens of ms). `Warm`
starts one init process in server mode (the "zygote", init.py `--zygote`) and, per command,
asks it over a socket to fork a *command half*, which does exactly what `unshare` does on
the cold path (fresh user (non-root), pid, net, ipc, uts and mount namespaces) and then
forks the same init as pid 1 of them. Per command, as on the cold path:

* fresh namespaces, a fresh filesystem view (private /tmp, /dev/shm, /run, work dir view),
  fresh cgroups (the parent moves the command half into them before it forks anything: it
  says "hello", the kernel tells us its pid (SO_PASSCRED), we move it, we say "go"),
  rlimits, a new session, a fresh result-channel fd, the same init and kill rules;
* nothing outlives the command: its init is pid 1 of its own pid namespace, and the
  cgroup kill runs as on the cold path. Nothing of one command is visible to the next:
  not its processes, files, SysV IPC, keyrings (non-root: own user namespace), sockets.

The zygote itself runs outside any namespace, as the caller, and never runs a command;
commands cannot see or signal it (they are in a pid namespace below it). It exits when
its socket is closed (`close()`, garbage collection, or our death).

When the warm path is not possible here (no pid or mount namespace, `isolate=False`, no
pidfds, a zygote that failed its first run, a call from a second thread while one runs),
`Warm.run` is a cold `run()`; `SandboxResult.warm` says which path a result took and
`Warm.cold_why` why runs go the cold way.
"""

from __future__ import annotations

import array
import itertools
import marshal
import math
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from . import cgroups, probe
from . import init as ns_flags
from .runner import (
    Group,
    LaunchUnavailable,
    Limits,
    Plan,
    SandboxResult,
    rlimit_values,
    run,
    run_with,
)

DEFAULT_LIMITS = Limits()
START_SECONDS = 30.0  # the zygote's start-up, and its answer to a request, at most
_CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_COUNTER = itertools.count()


class _Zygote:
    """The server process, our end of its socket, and the cgroups it (and so every command
    it forks) lives in."""

    def __init__(self, limits: Limits) -> None:
        self.key = (limits.memory_bytes, limits.processes)
        self.group = cgroups.RunGroup(
            limits.memory_bytes, limits.processes, cgroups.available(),
            name=f"ratchet-warm-{os.getpid()}-{next(_COUNTER)}-{secrets.token_hex(3)}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()
        self.dead = False
        joined = self.group
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(probe.INIT_PATH), "--zygote",
                 str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
                pass_fds=(theirs.fileno(),), start_new_session=True, cwd="/",
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                preexec_fn=joined.join_self)
        except BaseException:
            ours.close()
            self.log.close()
            self.group.remove()
            raise
        finally:
            theirs.close()
        self.sock = ours
        if not _readable(ours, START_SECONDS) or ours.recv(16) != b"ready":
            why = self.log_tail()
            self.close()
            raise OSError(f"the warm sandbox did not start: {why}")

    def log_tail(self) -> str:
        try:
            self.log.seek(0)
            return self.log.read()[-500:].decode(errors="replace").strip() or "(no output)"
        except (OSError, ValueError):
            return "(no output)"

    def close(self) -> None:
        self.dead = True
        self.sock.close()  # the zygote sees EOF and exits
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.group.kill_all(time.monotonic() + 10)
        self.group.remove()
        for function, why in self.group.problems:
            probe.record_failure(f"cgroup-{function}", why)
        self.log.close()


class _Share:
    """One command's share of the zygote's long-lived cgroups (runner.Group): its limits
    are theirs; kill_all empties them of everything but the zygote; CPU time and OOM
    kills are what changed during the command."""

    def __init__(self, zygote: _Zygote) -> None:
        self.group, self.spare = zygote.group, zygote.proc.pid
        self.used, self.problems = self.group.used, self.group.problems
        self.cpu0 = self.group.cpu_seconds()
        self.oom0 = self.group.oom_count()

    def layers(self) -> list[str]:
        return self.group.layers()

    def kill_all(self, deadline: float) -> bool:
        return self.group.kill_all(deadline, spare=self.spare)

    def oom_killed(self) -> bool:
        return self.group.oom_count() > self.oom0

    def cpu_seconds(self) -> float | None:
        now = self.group.cpu_seconds()
        return None if now is None or self.cpu0 is None else now - self.cpu0

    def remove(self) -> None:
        pass  # the zygote's groups live on; close() removes them


def _readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(max(1, int(left * 1000) + 1)):
            return True


class _WarmLaunch:
    """runner.Launcher for one command through the zygote."""

    def __init__(self, zygote: _Zygote) -> None:
        self.zygote = zygote
        self.share: _Share | None = None
        self.sent = False  # a request is out: exactly one "done" answer is owed
        self.done: int | None = None  # the command half's wait status
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.sync: socket.socket | None = None

    def group(self, limits: Limits) -> Group:
        self.share = _Share(self.zygote)
        return self.share

    def start(self, cfg: dict[str, Any], plan: Plan, *, cwd: Path, out: IO[bytes],
              err: IO[bytes], status_w: int, result_fd: int | None, limits: Limits,
              cgroup: Group | None, timeout: float) -> str | None:
        if not os.path.isdir(cwd):  # what Popen(cwd=...) says on the cold path
            return f"could not start the sandbox: no such directory: {cwd}"
        f = ns_flags
        flags = f.CLONE_NEWPID | f.CLONE_NEWNS
        flags |= f.CLONE_NEWUSER if os.geteuid() != 0 else 0
        flags |= f.CLONE_NEWNET if plan.ns["net"] else 0
        flags |= f.CLONE_NEWIPC if plan.ns["ipc"] else 0
        flags |= f.CLONE_NEWUTS if plan.ns["uts"] else 0
        req = {"cfg": cfg, "rlimits": rlimit_values(limits, cgroup), "unshare": flags}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sync = ours
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        fds = [out.fileno(), err.fileno(), status_w, theirs.fileno()]
        fds += [result_fd] if result_fd is not None else []
        try:
            self.zygote.sock.sendmsg([marshal.dumps(req)], [
                (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        except (OSError, ValueError) as exc:
            self.zygote.dead = True
            raise LaunchUnavailable(f"warm sandbox gone: {exc}") from exc
        finally:
            theirs.close()
        self.sent = True
        pid = self._hello(min(timeout, START_SECONDS))
        if pid is None:  # no "hello": the command half never got "go", nothing ran
            self.zygote.dead = True
            raise LaunchUnavailable(f"the warm sandbox did not answer ({self.zygote.log_tail()})")
        self.pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
            ours.sendall(b"go")
        except OSError as exc:
            return f"could not start the sandbox: {exc}"
        return None

    def _hello(self, timeout: float) -> int | None:
        """The command half's pid, as the kernel reports the sender of its "hello"."""
        assert self.sync is not None
        if not _readable(self.sync, timeout):
            return None
        try:
            msg, anc, _flags, _addr = self.sync.recvmsg(16, socket.CMSG_SPACE(_CRED.size))
        except OSError:
            return None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS \
                    and len(data) >= _CRED.size and msg == b"hello":
                return int(_CRED.unpack(data[:_CRED.size])[0])
        return None

    def wait(self, timeout: float) -> bool:
        """True if the command is still running after `timeout` seconds: woken by the
        kernel when the command half exits (its pidfd), then the zygote's answer."""
        assert self.pidfd is not None
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not poller.poll(max(1, math.ceil((deadline - time.monotonic()) * 1000))):
            if time.monotonic() >= deadline:
                return True
        if _readable(self.zygote.sock, 10):
            self._answer()
        else:
            self.zygote.dead = True
        return False

    def _answer(self) -> None:
        """Read the zygote's "done <wait status>" (EOF or garbage: the zygote is gone)."""
        try:
            words = self.zygote.sock.recv(64).split()
        except OSError:
            words = []
        if len(words) == 2 and words[0] == b"done" and words[1].lstrip(b"-").isdigit():
            self.done = int(words[1])
        else:
            self.zygote.dead = True
            self.done = -1
        self.sent = False

    def kill(self, cgroup: Group | None) -> None:
        """As on the cold path: kill the command half (its init dies with it: parent-death
        signal, and the pid namespace with its init), the session, the cgroups; wait for
        the zygote to have reaped it."""
        if self.sent and self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass
            if self.pid is not None:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    pass
        if cgroup is not None:
            cgroup.kill_all(time.monotonic() + 10)
        if self.sent:
            if self.pid is None and self.sync is not None:
                self.sync.close()  # a half still waiting for "go" exits on EOF
            if not self.zygote.dead and _readable(self.zygote.sock, 10):
                self._answer()
            else:
                self.zygote.dead = True
            if cgroup is not None:
                cgroup.kill_all(time.monotonic() + 10)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.sync is not None:
            self.sync.close()

    @property
    def returncode(self) -> int | None:
        if self.done is None or self.done == -1:
            return None
        return os.waitstatus_to_exitcode(self.done)


def _close(holder: list[_Zygote]) -> None:
    while holder:
        holder.pop().close()


class Warm:
    """A warm sandbox (see the module doc). Use as a context manager, or call `close()`;
    it is also closed when garbage-collected or at exit. Thread-safe (a second concurrent
    caller gets a cold run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: list[_Zygote] = []
        self._broken: str | None = None  # why the warm path failed here (for good)
        self._finalizer = weakref.finalize(self, _close, self._holder)

    def __enter__(self) -> Warm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            _close(self._holder)

    @property
    def broken(self) -> str | None:
        """Why the warm path failed here for good (it then runs everything cold)."""
        return self._broken

    @property
    def cold_why(self) -> str | None:
        """Why runs go the cold way here (None: they run warm)."""
        return self._broken or _cold_why(True)

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        timeout: float,
        limits: Limits = DEFAULT_LIMITS,
        env: Mapping[str, str] | None = None,
        ro_paths: Sequence[Path] = (),
        isolate: bool = True,
        result_channel: bool = False,
        artefacts: Sequence[str] = (),
        readonly_inside: Sequence[str] = (),
    ) -> SandboxResult:
        """`sandbox.run` (same arguments, same result), without a cold start."""
        kwargs: dict[str, Any] = dict(
            cwd=cwd, timeout=timeout, limits=limits, env=env, ro_paths=ro_paths,
            isolate=isolate, result_channel=result_channel, artefacts=artefacts,
            readonly_inside=readonly_inside)
        if self._broken is None and _cold_why(isolate) is None \
                and self._lock.acquire(blocking=False):
            try:
                for _attempt in range(2):  # a zygote found dead before the command ran
                    zygote = self._zygote(limits)
                    if zygote is None:
                        break
                    try:
                        res = run_with(_WarmLaunch(zygote), argv, **kwargs)
                    except LaunchUnavailable:
                        _close(self._holder)
                        continue
                    if zygote.dead:
                        _close(self._holder)
                    return replace(res, warm=True)
            finally:
                self._lock.release()
        return run(argv, **kwargs)

    def _zygote(self, limits: Limits) -> _Zygote | None:
        """The running zygote for these cgroup limits, started (and tried once) on first
        use; another memory or process limit gets a new one (its groups are the limits)."""
        key = (limits.memory_bytes, limits.processes)
        if self._holder and self._holder[0].proc.poll() is None \
                and self._holder[0].key == key and not self._holder[0].dead:
            return self._holder[0]
        _close(self._holder)
        try:
            zygote = _Zygote(limits)
        except OSError as exc:
            self._broken = str(exc)
            return None
        probe_dir = tempfile.mkdtemp(prefix="ratchet-warm-")
        try:
            res = run_with(_WarmLaunch(zygote), ["true"], cwd=Path(probe_dir), timeout=30,
                           limits=limits, env=None, ro_paths=(), isolate=True,
                           result_channel=False, artefacts=(), readonly_inside=())
        except LaunchUnavailable as exc:
            res = None
            self._broken = f"the warm sandbox failed its first run: {exc}"
        finally:
            os.rmdir(probe_dir)
        if res is not None and not res.ok:
            self._broken = ("the warm sandbox failed its first run: "
                            f"{res.error or res.stderr.strip()[-300:] or res.returncode}")
        if self._broken is not None or zygote.dead:
            self._broken = self._broken or "the warm sandbox died in its first run"
            zygote.close()
            return None
        self._holder.append(zygote)
        return zygote


def _cold_why(isolate: bool) -> str | None:
    """Why a run cannot go the warm way here (None: it can)."""
    if not isolate:
        return "isolate=False"
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open") \
            or not hasattr(signal, "pidfd_send_signal") or not hasattr(socket, "SO_PASSCRED"):
        return "needs Linux with pidfds and SO_PASSCRED"
    ns = probe.namespaces()
    if not ns["pid"]:
        return "no pid namespace here"
    if os.geteuid() != 0 and not ns["user"]:
        return "no user namespace here"
    if not (ns["mount"] and probe.mount_setup().ok):
        return "no mount namespace view here"
    return None
