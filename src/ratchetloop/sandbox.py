"""Run untrusted work (a candidate's build, validation and timing) in a contained child.

Candidate code is hostile. `run()` starts it as a tree of processes of its own, enforces
limits, kills the whole tree when it is done or out of time, and never raises for anything
the child does. Which layers are active depends on the machine; `describe_layers()` says,
per layer, whether it is active here and why not (``ratchet doctor`` prints it).

Layers, outermost first (each one optional, probed once, used when it works):

* cgroups (v1: memory, pids, freezer; needs write access to /sys/fs/cgroup, i.e. root or a
  delegated hierarchy). memory: a hard limit on resident memory + page cache + tmpfs the
  tree uses; the kernel OOM-kills inside the group, not the machine. It counts real pages,
  so AddressSanitizer's terabyte-sized shadow *reservation* is fine (RLIMIT_AS is not:
  ASan cannot start under it, so it is off unless `Limits.address_space_bytes` is set).
  pids: a process-count limit (RLIMIT_NPROC is not enforced for root). freezer: at the end
  the group is frozen, every member SIGKILLed and thawed, and run() waits until the group is
  empty, so nothing that double-forked, called setsid() or re-parented itself survives.
* `unshare` namespaces (util-linux; as non-root only where unprivileged user namespaces are
  allowed, with --user --map-root-user): pid (the tree has its own pid 1, our init below;
  when it exits or the sandbox is killed, the kernel kills every process in the namespace;
  the tree cannot see or signal anything outside it), net (no interfaces but a loopback
  that is down: no network at all, not even 127.0.0.1 of the host), ipc, uts, and mount:
  the whole filesystem is remounted read-only; /tmp, /dev/shm and /run are fresh private
  tmpfs; /dev is a minimal tmpfs (null, zero, full, random, urandom, tty; no block devices);
  /proc is the namespace's own, read-only; the caller's $HOME is hidden behind an empty tmpfs
  with only the Python installation bound back read-only; the work dir (cwd) is the one
  writable place, and by default the run works on a copy of it in a size-capped tmpfs
  (`Limits.work_bytes`, charged to the memory cgroup) that the init copies back, regular
  files and directories only (no symlinks, fifos or devices), when the command exits.
  After a timeout nothing is copied back: only stdout/stderr survive.
* our init (this file run as a script): sets up the mounts above, then drops every
  capability (bounding, permitted, effective, inheritable, ambient) and sets
  no_new_privs, so even a root child cannot undo the mounts, escape its cgroups, mount the
  disk, or gain privileges from setuid binaries. It forks the command, reaps orphans
  (PR_SET_CHILD_SUBREAPER), and when the command exits it kills whatever is left of the
  tree and reports the command's status on a pipe.
* always: a new session/process group (killpg), rlimits (CPU seconds per process, file size,
  open files, no core dumps; RLIMIT_NPROC for non-root callers), stdin from /dev/null,
  stdout/stderr to unlinked temp files (size bounded by RLIMIT_FSIZE, a capped head+tail
  returned), and an environment built from a short allowlist; any variable whose name looks
  like a secret (KEY, TOKEN, SECRET, PASSWORD, ...) or whose value equals a secret of ours is
  dropped even if the caller passes it.

Not covered (be honest with yourself before trusting a result):

* Without the mount namespace the child can read and write anything the calling user can:
  the experiment folder, $HOME, other checkouts. Without the pid namespace *and* cgroups a
  process that double-forks and setsid()s can outlive the run (our init, as subreaper,
  still kills orphans re-parented to it unless the child kills the init first).
  Without the net namespace the network is open. Without a memory cgroup there is no
  memory limit at all (only the wall clock); without a pids cgroup a fork bomb is only
  bounded by RLIMIT_NPROC (non-root) or the timeout (root).
* Even with everything active: the rest of the filesystem stays *readable* (keep keys in the
  environment or under $HOME, which is hidden); a Unix socket on a read-only path can still
  be connected to; with `work_bytes=None` (or no mount namespace) disk use in the work dir
  is bounded per file (RLIMIT_FSIZE), not in total; CPU is not throttled (a tree can use
  all cores until the timeout); there is no seccomp filter, so kernel bugs are in scope;
  timing side channels are not addressed; the child still runs as the caller's uid (root
  here, without capabilities), so the kernel's uid checks are not a barrier of their own.
* stdout belongs to the top-level command (eval.py); a harness must not hand its own stdout
  to the candidate binary, or the candidate can forge the result line.
"""

from __future__ import annotations

import ctypes
import fnmatch
import functools
import itertools
import json
import os
import re
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
SECRET_PATTERNS = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*",
                   "*AUTH*")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_COUNTER = itertools.count()


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 900  # RLIMIT_CPU, per process
    memory_bytes: int | None = 4 << 30  # memory cgroup (RSS + cache + tmpfs); ASan-safe
    file_bytes: int = 256 << 20  # RLIMIT_FSIZE: largest file (stdout/stderr files too)
    open_files: int = 256
    processes: int = 512  # pids cgroup (RLIMIT_NPROC for non-root callers)
    output_bytes: int = 1 << 20  # returned per stream (head and tail kept)
    tmp_bytes: int = 512 << 20  # size of the private /tmp tmpfs
    # Total disk the run may use in its work dir: with the mount namespace the run works on a
    # tmpfs copy of that size (charged to the memory cgroup) and the init copies regular
    # files back when the command exits (not after a timeout). None: the real dir, rw.
    work_bytes: int | None = 1 << 30
    address_space_bytes: int | None = None  # RLIMIT_AS; breaks ASan, off by default


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

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None


# --------------------------------------------------------------------------- environment


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pat) for pat in SECRET_PATTERNS)


def _secret_values() -> set[str]:
    return {v for k, v in os.environ.items() if _looks_secret(k) and len(v) >= 8}


def safe_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's whole environment: a short allowlist plus what the caller adds.

    Whatever the allowlist or the caller say, no variable named like a secret, and no value
    equal to one of our secrets, gets through.
    """
    return _scrub(_base_env(extra))[0]


def _base_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = env.get("TMPDIR", tempfile.gettempdir())
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def _scrub(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    bad_values = _secret_values()
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for k, v in env.items():
        if _looks_secret(k) or any(s in v for s in bad_values):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


# --------------------------------------------------------------------------- probing


def _unshare_base() -> list[str] | None:
    exe = shutil.which("unshare")
    if exe is None:
        return None
    return [exe] if os.geteuid() == 0 else [exe, "--user", "--map-root-user"]


def _try(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _namespaces() -> dict[str, bool]:
    """Which namespaces `unshare` can create here (each probed on its own)."""
    base = _unshare_base()
    found = {"user": False, "pid": False, "net": False, "ipc": False, "uts": False,
             "mount": False}
    if base is None or not sys.platform.startswith("linux"):
        return found
    found["user"] = os.geteuid() != 0 and _try(base + ["true"])
    if os.geteuid() != 0 and not found["user"]:
        return found
    flags = {"pid": ["--pid", "--fork", "--kill-child"], "net": ["--net"], "ipc": ["--ipc"],
             "uts": ["--uts"], "mount": ["--mount", "--propagation", "private"]}
    for name, args in flags.items():
        found[name] = _try(base + args + ["true"])
    if found["mount"]:
        # The mount setup itself must work end to end (read-only root, private /tmp, ...).
        work = tempfile.mkdtemp(prefix="ratchet-probe-")
        try:
            cfg = _init_config(["true"], Path(work), {"PATH": "/usr/bin:/bin"}, Limits(),
                               mount=True, pid_ns=found["pid"], keep=[], status_fd=-1)
            found["mount"] = _try(_wrapper(found, mount=True) + _init_argv(cfg))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return found


def _own_cgroup(controller: str) -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and controller in parts[1].split(","):
            base = CGROUP_ROOT / controller
            path = base / parts[2].lstrip("/")
            return path if path.is_dir() else base
    return None


@functools.cache
def _cgroups() -> dict[str, Path]:
    """cgroup v1 controllers we can create child groups in: controller -> parent dir."""
    found: dict[str, Path] = {}
    for controller, probe_file in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max"),
                                   ("freezer", "freezer.state")):
        parent = _own_cgroup(controller)
        if parent is None:
            continue
        probe = parent / f"ratchet-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            if (probe / probe_file).exists():
                found[controller] = parent
        finally:
            try:
                probe.rmdir()
            except OSError:
                pass
    return found


def describe_layers() -> list[tuple[str, bool, str]]:
    """Each containment layer: (name, active on this machine?, what it covers / why not)."""
    ns = _namespaces()
    cg = _cgroups()
    root = os.geteuid() == 0
    have_unshare = shutil.which("unshare") is not None
    why_ns = ("`unshare` not found (util-linux)" if not have_unshare else
              "unprivileged user namespaces are not allowed here" if not root and not ns["user"]
              else "`unshare` failed to create it here")
    why_cg = ("cannot create child cgroups (cgroup v1 at /sys/fs/cgroup/<controller> "
              "not writable)")
    layers = [
        ("session", True, "new session/process group, killpg on timeout and on exit"),
        ("rlimits", True, "CPU seconds per process, max file size, open files, no core dumps"
         + ("" if root else ", RLIMIT_NPROC")),
        ("env-allowlist", True, "only PATH/LANG/LC_ALL/TZ/TMPDIR/HOME + caller's extras; "
         "names like *KEY*/*TOKEN*/*SECRET*/*PASSWORD* and our secrets' values always dropped"),
        ("output-cap", True, "stdout/stderr to temp files bounded by the file-size limit; "
         "head and tail returned"),
        ("init-reaper", True, "our init reaps orphans as subreaper and kills the leftover "
         "tree when the command exits; drops all capabilities, sets no_new_privs"),
        ("user-namespace", ns["user"], "unprivileged namespaces via --map-root-user" if
         ns["user"] else ("not needed: running as root" if root else why_ns)),
        ("pid-namespace", ns["pid"], "own pid 1; the whole tree dies with it, nothing "
         "outside is visible or signalable" if ns["pid"] else why_ns),
        ("net-namespace", ns["net"], "no network (loopback down, host's 127.0.0.1 "
         "unreachable)" if ns["net"] else why_ns + "; the network is open"),
        ("mount-namespace", ns["mount"], "filesystem read-only except the work dir; private "
         "/tmp, /dev/shm, /run; minimal /dev; $HOME hidden; own /proc" if ns["mount"] else
         why_ns + "; the child can read and write everything the caller can"),
        ("ipc/uts-namespaces", ns["ipc"] and ns["uts"], "private SysV IPC and hostname"
         if ns["ipc"] and ns["uts"] else why_ns),
        ("cgroup-memory", "memory" in cg, "hard memory limit (OOM kill inside the group); "
         "ASan-compatible" if "memory" in cg else why_cg + "; NO memory limit"),
        ("cgroup-pids", "pids" in cg, "process-count limit (fork bombs)" if "pids" in cg
         else why_cg + "; fork bombs only stopped by " + ("the timeout" if root else
                                                          "RLIMIT_NPROC and the timeout")),
        ("cgroup-freezer", "freezer" in cg, "freeze + kill every process of the run, wait "
         "until none is left" if "freezer" in cg else why_cg),
        ("disk-quota", ns["mount"], "work dir is a size-capped tmpfs copy (Limits.work_bytes),"
         " copied back on exit; /tmp is a capped tmpfs" if ns["mount"] else "needs the mount "
         "namespace: disk use is only bounded per file (RLIMIT_FSIZE)"),
        ("seccomp", False, "not implemented: all syscalls are available (kernel attack "
         "surface remains)"),
    ]
    return layers


def active_layers() -> list[str]:
    return [name for name, active, _ in describe_layers() if active]


# --------------------------------------------------------------------------- cgroups


class _CGroup:
    """A set of per-controller v1 cgroups for one run (best effort; empty if unavailable)."""

    def __init__(self, limits: Limits) -> None:
        self.dirs: dict[str, Path] = {}
        name = f"ratchet-{os.getpid()}-{next(_COUNTER)}-{secrets.token_hex(3)}"
        for controller, parent in _cgroups().items():
            _sweep_stale(parent)
            path = parent / name
            try:
                path.mkdir()
            except OSError:
                continue
            self.dirs[controller] = path
        try:
            if "memory" in self.dirs and limits.memory_bytes is not None:
                mem = self.dirs["memory"]
                (mem / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
                memsw = mem / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(str(limits.memory_bytes))
            if "pids" in self.dirs:
                (self.dirs["pids"] / "pids.max").write_text(str(limits.processes))
        except OSError:
            self.remove()
            raise

    def join_self(self) -> None:
        """Called in the child before exec: move it (and so its descendants) into the groups."""
        pid = str(os.getpid())
        for path in self.dirs.values():
            with open(path / "cgroup.procs", "w") as fh:
                fh.write(pid)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            try:
                found.update(int(x) for x in (path / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def oom_killed(self) -> bool:
        mem = self.dirs.get("memory")
        if mem is None:
            return False
        try:
            ctl = (mem / "memory.oom_control").read_text()
            m = re.search(r"^oom_kill (\d+)", ctl, re.M)
            if m:
                return int(m.group(1)) > 0
            return int((mem / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def kill_all(self, deadline: float) -> bool:
        """Freeze, SIGKILL every member, thaw; repeat until empty. True if it emptied."""
        frz = self.dirs.get("freezer")
        while True:
            if frz is not None:
                _write(frz / "freezer.state", "FROZEN")
                while time.monotonic() < deadline:
                    if _read(frz / "freezer.state").strip() == "FROZEN":
                        break
                    time.sleep(0.002)
            members = self.pids()
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if frz is not None:
                _write(frz / "freezer.state", "THAWED")
            if not members:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def remove(self) -> None:
        for path in self.dirs.values():
            try:
                path.rmdir()
            except OSError:
                pass


def _sweep_stale(parent: Path) -> None:
    """Remove empty groups left by sandbox callers that died (their pid is gone)."""
    try:
        entries = list(parent.glob("ratchet-*-*-*"))
    except OSError:
        return
    for path in entries:
        owner = path.name.split("-")[1]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            try:
                path.rmdir()  # fails (harmlessly) while processes remain in it
            except OSError:
                pass


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --------------------------------------------------------------------------- parent side


def _limit_child(limits: Limits, cgroup: _CGroup | None) -> None:
    """preexec_fn: join the cgroups, then set rlimits (inherited by the whole tree)."""
    if cgroup is not None:
        cgroup.join_self()

    def setl(which: int, value: int) -> None:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass

    setl(resource.RLIMIT_CPU, limits.cpu_seconds)
    if limits.address_space_bytes is not None:
        setl(resource.RLIMIT_AS, limits.address_space_bytes)
    setl(resource.RLIMIT_FSIZE, limits.file_bytes)
    setl(resource.RLIMIT_NOFILE, limits.open_files)
    setl(resource.RLIMIT_CORE, 0)
    if os.geteuid() != 0 and (cgroup is None or "pids" not in cgroup.dirs):
        setl(resource.RLIMIT_NPROC, limits.processes + _count_own_processes())


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


def _read_capped(fh: Any, cap: int) -> tuple[str, bool]:
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


def _wrapper(ns: Mapping[str, bool], *, mount: bool) -> list[str]:
    base = _unshare_base()
    if base is None or (os.geteuid() != 0 and not ns["user"]):
        return []
    args: list[str] = []
    if ns["pid"]:
        args += ["--pid", "--fork", "--kill-child"]
    for name in ("net", "ipc", "uts"):
        if ns[name]:
            args.append(f"--{name}")
    if mount:
        args += ["--mount", "--propagation", "private"]
    return base + args if args else []


def _keep_paths(env: Mapping[str, str], argv: Sequence[str], extra: Sequence[Path]) -> list[str]:
    """Paths that must stay reachable (read-only) even when $HOME is hidden."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    paths.update(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)
    if argv and os.path.isabs(argv[0]):
        paths.add(os.path.dirname(os.path.realpath(argv[0])))
    paths.update(str(p) for p in extra)
    real = sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)})
    return [p for p in real if not any(q != p and _under(p, q) for q in real)]


def _init_config(argv: Sequence[str], cwd: Path, env: Mapping[str, str], limits: Limits, *,
                 mount: bool, pid_ns: bool, keep: Sequence[str], status_fd: int) -> dict:
    home = os.path.realpath(os.path.expanduser("~"))
    return {
        "argv": list(argv), "cwd": os.path.realpath(cwd), "env": dict(env), "mount": mount,
        "pid_ns": pid_ns, "keep": list(keep), "home": home, "status_fd": status_fd,
        "tmp_bytes": limits.tmp_bytes, "deadline": None, "work_bytes": limits.work_bytes,
    }


def _init_argv(cfg: Mapping[str, Any]) -> list[str]:
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), "--init", json.dumps(cfg)]


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    limits: Limits = Limits(),
    env: Mapping[str, str] | None = None,
    ro_paths: Sequence[Path] = (),
    isolate: bool = True,
) -> SandboxResult:
    """Run `argv` contained; never raises for anything the child does.

    `cwd` is the only writable place on disk (when the mount namespace is available);
    `ro_paths` are extra paths kept readable even if they live under the hidden $HOME.
    `isolate=False` skips namespaces and cgroups (session, rlimits and env scrub remain).
    """
    start = time.monotonic()
    ns = _namespaces() if isolate else dict.fromkeys(
        ("user", "pid", "net", "ipc", "uts", "mount"), False)
    layers = ["session", "rlimits", "env-allowlist", "output-cap", "init-reaper"]
    layers += [f"{k}-namespace" for k, v in ns.items() if v]
    child_env, dropped = _scrub(_base_env(env))
    if ns["mount"]:
        child_env["TMPDIR"] = "/tmp"
        child_env["HOME"] = "/tmp"
    try:
        cgroup = _CGroup(limits) if isolate else None
    except OSError as exc:
        return SandboxResult(None, "", "", error=f"cgroup setup failed: {exc}", layers=layers,
                             wall_seconds=time.monotonic() - start)
    if cgroup is not None:
        layers += [f"cgroup-{c}" for c in cgroup.dirs]
    status_r, status_w = os.pipe()
    keep = _keep_paths(child_env, argv, ro_paths)
    cfg = _init_config(argv, cwd, child_env, limits, mount=ns["mount"], pid_ns=ns["pid"],
                       keep=keep, status_fd=status_w)
    # The init enforces the wall clock too (a little later than we do), so the tree dies on
    # time even if this process is killed and never gets to clean up.
    cfg["deadline"] = timeout + 5.0
    cmd = _wrapper(ns, mount=ns["mount"]) + _init_argv(cfg)
    timed_out = False
    error: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    env={"PATH": child_env.get("PATH", "/usr/bin:/bin")},
                    start_new_session=True, pass_fds=(status_w,),
                    preexec_fn=lambda: _limit_child(limits, cgroup),
                )
            except OSError as exc:
                error = f"could not start the sandbox: {exc}"
            finally:
                os.close(status_w)
            if proc is not None:
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                except BaseException:  # Ctrl-C in the loop: the tree must not outlive it
                    _kill_tree(proc, cgroup)
                    raise
                _kill_tree(proc, cgroup)
            status = _read_status(status_r)
            stdout, t1 = _read_capped(out, limits.output_bytes)
            stderr, t2 = _read_capped(err, limits.output_bytes)
    finally:
        os.close(status_r)
        oom = cgroup.oom_killed() if cgroup is not None else False
        if cgroup is not None:
            cgroup.remove()
    rc = proc.returncode if proc is not None else None
    if status is not None:
        kind, value = status
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
        dropped_env=dropped,
    )


def _read_status(fd: int) -> tuple[str, int] | None:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 256).decode(errors="replace").split()
    except OSError:
        return None
    if len(data) == 2 and data[1].lstrip("-").isdigit():
        return data[0], int(data[1])
    return None


def _kill_tree(proc: subprocess.Popen[bytes], cgroup: _CGroup | None) -> None:
    """Kill everything the run started, however it tried to escape; wait until it is gone."""
    if proc.poll() is None:
        # Without a pid namespace the init kills its own leftovers on SIGTERM; with one,
        # SIGKILL to unshare takes the namespace's init (and so the namespace) with it.
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    _killpg(proc.pid)
    if cgroup is not None and cgroup.dirs:
        cgroup.kill_all(time.monotonic() + 10)
    try:
        proc.kill()
    except OSError:
        pass
    proc.wait()
    _killpg(proc.pid)
    if cgroup is not None and cgroup.dirs:
        cgroup.kill_all(time.monotonic() + 10)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- init (child side)
# Runs as `python -I -S sandbox.py --init CONFIG` inside the namespaces, before the command.
# Standard library only; nothing here may depend on the package being importable.

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
_MOUNT_OPTS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
               "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 38, 24, 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
PR_SET_DUMPABLE, MNT_DETACH = 4, 2
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


class _SetupError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc: ctypes.CDLL, src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        raise _SetupError(f"mount {src} -> {target} ({fstype}): {os.strerror(e)}")


def _mountinfo() -> Iterator[tuple[str, int]]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        flags = 0
        for opt in fields[5].split(","):
            flags |= _MOUNT_OPTS.get(opt, 0)
        yield point, flags


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _setup_fs(cfg: Mapping[str, Any]) -> int | None:
    """Build the filesystem view; returns a write handle on the real work dir if the run
    works on a size-capped tmpfs copy of it (the init copies results back at the end)."""
    libc = _libc()
    work = cfg["cwd"]
    home = cfg["home"]
    keep = [p for p in cfg["keep"] if not _under(p, work)]
    # Hide $HOME unless what we must run lives in it and cannot be bound back.
    hide = ["/tmp", "/run"]
    if home not in ("/", "") and not _under(work, home) and os.path.isdir(home):
        hide.append(home)
    hide = [h for h in dict.fromkeys(hide) if os.path.isdir(h) and not os.path.islink(h)]
    # Handles on everything we rebind after covering their parents with tmpfs.
    fds = {p: os.open(p, os.O_PATH) for p in [work, *keep]}
    dev_fds = {n: os.open(f"/dev/{n}", os.O_PATH) for n in DEV_NODES
               if os.path.exists(f"/dev/{n}")}

    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    for point, flags in _mountinfo():
        try:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except _SetupError:
            if point == "/":
                raise
    if cfg["pid_ns"]:
        _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    tmp_opts = f"size={cfg['tmp_bytes']},mode=1777"
    for h in hide:
        _mount(libc, "tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts)
    _mount(libc, "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=755")
    for n, fd in dev_fds.items():
        Path(f"/dev/{n}").touch()
        _mount(libc, f"/proc/self/fd/{fd}", f"/dev/{n}", None, MS_BIND)
    os.mkdir("/dev/shm")
    _mount(libc, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/dev/{name}")
    os.symlink("/proc/self/fd", "/dev/fd")
    # Bring back what must stay reachable under the hidden dirs: read-only, then the work dir.
    for p in keep:
        if any(_under(p, h) for h in hide):
            _bind_back(libc, fds[p], p, readonly=True)
    rw_fd: int | None = None
    if cfg.get("work_bytes"):
        rw_fd = _detached_rw_handle(libc, fds[work])
        mode = os.stat(f"/proc/self/fd/{fds[work]}").st_mode & 0o7777
        os.makedirs(work, exist_ok=True)
        _mount(libc, "tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={cfg['work_bytes']},mode={mode:o}")
        shutil.copytree(f"/proc/self/fd/{rw_fd}", work, symlinks=True, dirs_exist_ok=True,
                        ignore=_only_files(links=True))
    else:
        _bind_back(libc, fds[work], work, readonly=False)
    for h in hide:  # hidden dirs stay empty and read-only (except the private /tmp)
        if h != "/tmp":
            _mount(libc, None, h, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for fd in [*fds.values(), *dev_fds.values()]:
        os.close(fd)
    return rw_fd


def _detached_rw_handle(libc: ctypes.CDLL, fd: int) -> int:
    """A writable handle on a directory that no path in this namespace leads to."""
    stage = "/dev/.ratchet-work"
    os.mkdir(stage, 0o700)
    _mount(libc, f"/proc/self/fd/{fd}", stage, None, MS_BIND)
    _mount(libc, None, stage, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    handle = os.open(stage, os.O_PATH | os.O_DIRECTORY)
    if libc.umount2(stage.encode(), MNT_DETACH) != 0:
        raise _SetupError(f"umount {stage}: {os.strerror(ctypes.get_errno())}")
    os.rmdir(stage)
    return handle


def _only_files(*, links: bool) -> Any:
    """copytree ignore= callback: skip fifos, sockets, devices (and symlinks unless `links`)."""
    def skip(directory: str, names: list[str]) -> list[str]:
        out = []
        for n in names:
            try:
                mode = os.lstat(os.path.join(directory, n)).st_mode
            except OSError:
                out.append(n)
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or (links and stat.S_ISLNK(mode))):
                out.append(n)
        return out

    return skip


def _copy_back(work: str, rw_fd: int) -> None:
    """Copy the run's work dir (tmpfs) back to the real one: regular files and dirs only."""
    try:
        shutil.copytree(work, f"/proc/self/fd/{rw_fd}", ignore=_only_files(links=False),
                        dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:
        print(f"ratchet sandbox: copying the work dir back: {str(exc)[:500]}", file=sys.stderr,
              flush=True)


def _bind_back(libc: ctypes.CDLL, fd: int, path: str, *, readonly: bool) -> None:
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).touch()
    _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND)
    # A bind mount inherits the (now read-only) flags of its source mount: set them anew.
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if readonly else 0)
    _mount(libc, None, path, None, flags)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_privileges() -> None:
    """No capabilities in any set, now or after exec; no privilege gain via setuid files."""
    libc = _libc()
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise _SetupError(f"capset: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        raise _SetupError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _kill_leftovers() -> None:
    """Kill and reap every remaining descendant (orphans re-parent to us: subreaper)."""
    me = os.getpid()
    for _ in range(10000):
        kids = _children(me)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        if not kids:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return


def _init_main(cfg: Mapping[str, Any]) -> int:
    status_fd = cfg["status_fd"]

    def report(kind: str, value: int) -> None:
        if status_fd >= 0:
            try:
                os.write(status_fd, f"{kind} {value}\n".encode())
            except OSError:
                pass

    rw_fd: int | None = None
    try:
        if cfg["mount"]:
            rw_fd = _setup_fs(cfg)
        os.chdir(cfg["cwd"])
        libc = _libc()
        libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0)
        libc.prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), 0, 0, 0)  # no ptrace of the init
        _drop_privileges()
    except (OSError, _SetupError) as exc:
        print(f"ratchet sandbox: setup failed: {exc}", file=sys.stderr, flush=True)
        report("error", 1)
        return 125

    def on_term(signum: int, frame: object) -> None:
        if not cfg["pid_ns"]:  # in a pid namespace the kernel kills the rest when we exit
            _kill_leftovers()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    if cfg.get("deadline"):
        signal.signal(signal.SIGALRM, on_term)
        signal.setitimer(signal.ITIMER_REAL, float(cfg["deadline"]))
    pid = os.fork()
    if pid == 0:
        try:
            # Python ignores SIGPIPE and SIGXFSZ; ignored signals survive exec: restore them.
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            if status_fd >= 0:
                os.close(status_fd)
            argv = cfg["argv"]
            env = cfg["env"]
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            print(f"ratchet sandbox: cannot run {cfg['argv'][0]!r}: {exc}", file=sys.stderr,
                  flush=True)
        os._exit(127)
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            report("exit", 125)
            return 125
        except InterruptedError:
            continue
        if got == pid:
            break
    if os.WIFSIGNALED(status):
        report("signal", os.WTERMSIG(status))
        code = 128 + os.WTERMSIG(status)
    else:
        code = os.WEXITSTATUS(status)
        report("exit", code)
    if cfg["pid_ns"] and rw_fd is not None and os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)  # everything else in *our* namespace, before copying
        except ProcessLookupError:
            pass
        _reap_all()
    elif not cfg["pid_ns"]:
        _kill_leftovers()  # with a pid namespace the kernel does this when we exit
    if rw_fd is not None:
        _copy_back(cfg["cwd"], rw_fd)
    return code


def _reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--init":
        try:
            sys.exit(_init_main(json.loads(sys.argv[2])))
        except BaseException as exc:  # noqa: BLE001 - the init must never hang or spew
            if isinstance(exc, SystemExit):
                raise
            print(f"ratchet sandbox: init crashed: {exc!r}", file=sys.stderr, flush=True)
            os._exit(125)
    print("usage: sandbox.py --init CONFIG_JSON (internal)", file=sys.stderr)
    sys.exit(2)
