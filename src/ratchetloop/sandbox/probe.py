"""What works here, probed once per process, and how the init is launched.

Every probe runs the real thing (unshare, the init's whole mount setup, a seccomp filter in
a child) rather than guessing from versions. Failures that happen later, at run time, are
recorded too, so `describe_layers()` and `missing_layers()` never claim a layer that did
not hold.
"""

from __future__ import annotations

import functools
import marshal
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cgroups, env

INIT_PATH = Path(__file__).with_name("init.py")
NAMESPACES = ("user", "pid", "net", "ipc", "uts", "mount")
NO_NAMESPACES: dict[str, bool] = dict.fromkeys(NAMESPACES, False)
_RUNTIME_FAILURES: dict[str, str] = {}


def unshare_base() -> list[str] | None:
    """`unshare`, plus --user --map-root-user when we are not root."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    return [exe] if os.geteuid() == 0 else [exe, "--user", "--map-root-user"]


def _run(argv: list[str], timeout: float = 20) -> tuple[bool, str]:
    """(exit 0?, last line of stderr)."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    return proc.returncode == 0, (lines[-1] if lines else f"exit {proc.returncode}")


@functools.cache
def namespaces() -> dict[str, bool]:
    """Which namespaces `unshare` can create here (each on its own)."""
    base = unshare_base()
    found = dict(NO_NAMESPACES)
    if base is None or not sys.platform.startswith("linux"):
        return found
    found["user"] = os.geteuid() != 0 and _run(base + ["true"])[0]
    if os.geteuid() != 0 and not found["user"]:
        return found
    flags = {"pid": ["--pid", "--fork", "--kill-child"], "net": ["--net"], "ipc": ["--ipc"],
             "uts": ["--uts"], "mount": ["--mount", "--propagation", "private"]}
    for name, args in flags.items():
        found[name] = _run(base + args + ["true"])[0]
    return found


def wrapper(ns: Mapping[str, bool], *, mount: bool) -> list[str]:
    """The unshare command line for the namespaces we use (empty: run the init directly)."""
    base = unshare_base()
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


def init_config(argv: Sequence[str], cwd: Path, child_env: Mapping[str, str], *,
                mount: bool, pid_ns: bool, work_mode: str, keep: Sequence[str],
                status_fd: int, result_fd: int | None = None,
                readonly: Sequence[str] = (), artefacts: Sequence[str] = (),
                tmp_bytes: int = 64 << 20, work_bytes: int | None = 64 << 20,
                artefact_bytes: int = 0, deadline: float | None = None) -> dict[str, Any]:
    """The init's whole configuration (JSON on its command line); see init.py."""
    return {
        "argv": list(argv), "cwd": os.path.realpath(cwd), "env": dict(child_env),
        "mount": mount, "pid_ns": pid_ns, "work_mode": work_mode, "keep": list(keep),
        "homes": env.homes(), "hide_files": env.keys_files(), "status_fd": status_fd,
        "result_fd": result_fd, "readonly": list(readonly), "artefacts": list(artefacts),
        "artefact_bytes": artefact_bytes, "tmp_bytes": tmp_bytes, "work_bytes": work_bytes,
        "deadline": deadline,
    }


def init_argv(cfg: Mapping[str, Any]) -> list[str]:
    """The init runs by file path, isolated (-I) and without site (-S): stdlib only. The
    config is marshalled (the same interpreter reads it; json would cost its import)."""
    return [sys.executable, "-I", "-S", str(INIT_PATH), "--init", marshal.dumps(dict(cfg)).hex()]


@dataclass(frozen=True)
class MountSetup:
    """Result of running the init's mount setup end to end here."""

    ok: bool
    mode: str | None  # "overlay" | "copy" | None
    why: str  # why the mount setup fails (when not ok)
    overlay_why: str  # why overlayfs is not used (when mode == "copy")


@functools.cache
def mount_setup() -> MountSetup:
    """Run the real mount setup once with a private work view: overlayfs first, then the
    tmpfs copy. The init's own error message says why a mode does not work."""
    ns = namespaces()
    if not ns["mount"]:
        return MountSetup(False, None, "`unshare --mount` fails here", "")
    errors: dict[str, str] = {}
    for mode in ("overlay", "copy"):
        work = tempfile.mkdtemp(prefix="ratchet-probe-")
        try:
            cfg = init_config(["true"], Path(work), {"PATH": "/usr/bin:/bin"}, mount=True,
                              pid_ns=ns["pid"], work_mode=mode, keep=[], status_fd=-1)
            ok, why = _run(wrapper(ns, mount=True) + init_argv(cfg))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if ok:
            return MountSetup(True, mode, "", errors.get("overlay", ""))
        errors[mode] = why.removeprefix("ratchet sandbox: ")
    return MountSetup(False, None, errors["copy"], errors["overlay"])


_SECCOMP_PROBE = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
allow = (Filter * 1)(Filter(0x06, 0, 0, 0x7fff0000))  # BPF_RET|BPF_K SECCOMP_RET_ALLOW
prog = Prog(1, allow)
if libc.prctl(38, ctypes.c_ulong(1), 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit("no_new_privs refused")
if libc.prctl(22, ctypes.c_ulong(2), ctypes.byref(prog), 0, 0) != 0:  # SECCOMP_MODE_FILTER
    import os; sys.exit("filter refused: " + os.strerror(ctypes.get_errno()))
print(open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
"""


@functools.cache
def seccomp() -> tuple[bool, str]:
    """Does the kernel accept seccomp filters? (Seccomp: line, and a child that installs a
    trivial allow-all filter.)"""
    status = Path("/proc/self/status").read_text()
    if "Seccomp:" not in status:
        return False, "kernel built without seccomp (no Seccomp: line in /proc/self/status)"
    mode = status.split("Seccomp:")[1].split()[0]
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", _SECCOMP_PROBE],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"probe failed: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != "2":
        return False, f"a test filter was refused: {proc.stderr.strip()[-200:]}"
    return True, f"kernel accepts filters (we run in seccomp mode {mode}; a test filter held)"


def private_work_view() -> bool:
    """Do runs here (isolate=True, Limits.work_bytes set: the defaults) work on a private
    view of their work dir, discarded at exit, so that a run cannot write the real dir at
    all (the "work-dir" layer)? Callers may rely on that to reuse a run's directory."""
    return bool(namespaces()["mount"] and mount_setup().ok
                and not {"mount-namespace", "work-dir"} & _RUNTIME_FAILURES.keys())


def record_failure(layer: str, why: str) -> None:
    """A layer failed at run time: from now on describe_layers() reports it off, with why."""
    _RUNTIME_FAILURES[layer] = why[:300]


def describe_layers() -> list[tuple[str, bool, str]]:
    """Each containment layer: (name, active here?, what it covers / why it is off)."""
    ns = namespaces()
    ms = mount_setup()
    cg = cgroups.available()
    root = os.geteuid() == 0
    have_unshare = shutil.which("unshare") is not None
    why_ns = ("`unshare` not found (util-linux)" if not have_unshare else
              "unprivileged user namespaces are not allowed here" if not root and not ns["user"]
              else "`unshare` failed to create it here")
    mount = ns["mount"] and ms.ok
    why_mount = why_ns if not ns["mount"] else f"the mount setup fails here: {ms.why}"
    homes = ", ".join(env.homes()) or "(none)"
    rows: list[tuple[str, bool, str]] = [
        ("session", True, "new session/process group, killpg on timeout and on exit"),
        ("rlimits", True, "CPU seconds per process, max file size, open files, no core dumps"
         + ("" if root else ", RLIMIT_NPROC")),
        ("env-allowlist", True, "only PATH/LANG/LC_ALL/TZ/TMPDIR/HOME + caller's extras; "
         "names like *KEY*/*TOKEN*/*SECRET*/*PASSWORD* and our secrets' values always dropped"),
        ("output-cap", True, "stdout/stderr to temp files bounded by the file-size limit; "
         "head and tail returned"),
        ("init-reaper", True, "our init reaps orphans as subreaper and kills the leftover "
         "tree when the command exits; drops all capabilities, sets no_new_privs; reports "
         "the tree's CPU time"),
        ("non-root", not root, f"running as uid {os.geteuid()}: the child cannot touch "
         "other users' or root's files" if not root else "running as root: the child is uid 0 "
         "without capabilities (file permissions are no barrier; RLIMIT_NPROC does not apply)"),
        ("user-namespace", ns["user"], "unprivileged namespaces via --map-root-user" if
         ns["user"] else ("not needed: running as root" if root else why_ns)),
        ("pid-namespace", ns["pid"], "own pid 1; the whole tree dies with it, nothing "
         "outside is visible or signalable" if ns["pid"] else why_ns),
        ("net-namespace", ns["net"], "no network (loopback down, host's 127.0.0.1 "
         "unreachable)" if ns["net"] else why_ns + "; the network is open"),
        ("mount-namespace", mount, "filesystem read-only except the work dir view; private "
         "/tmp, /dev/shm, /run; minimal /dev; own /proc" if mount else
         why_mount + "; the child can read and write everything the caller can"),
        ("ipc/uts-namespaces", ns["ipc"] and ns["uts"], "private SysV IPC and hostname"
         if ns["ipc"] and ns["uts"] else why_ns),
        ("home-hidden", mount, f"{homes} behind an empty tmpfs wherever the work dir is; "
         "bound back read-only: the Python installation, ro_paths, PYTHONPATH entries, "
         "argv[0]'s dir; the work dir (private view)" if mount else
         f"needs the mount namespace: {homes} readable by the child"),
        ("keys-hidden", mount, f"{', '.join(env.keys_files())}: covered by an empty "
         "read-only file wherever still visible" if mount else
         "needs the mount namespace: the keys file is readable by the child"),
    ]
    if mount and ms.mode == "overlay":
        work = ("overlayfs (lower: the real dir, read-only; upper: tmpfs of "
                "Limits.work_bytes); discarded at exit")
    elif mount:
        work = (f"tmpfs copy of Limits.work_bytes (overlayfs not allowed here: "
                f"{ms.overlay_why}); discarded at exit")
    else:
        work = f"{why_mount}: the command writes in the real work dir and all of it stays"
    if mount:
        work += ("; only declared artefacts (plain top-level regular files) come back; "
                 "readonly_inside paths are read-only")
    rows += [
        ("work-dir", mount, work),
        ("disk-quota", mount, "work dir writes capped by Limits.work_bytes, /tmp by "
         "Limits.tmp_bytes" if mount else "needs the mount namespace: disk use is only "
         "bounded per file (RLIMIT_FSIZE)"),
    ]
    rows += _cgroup_rows(cg, root)
    ok, why = seccomp()
    rows.append(("seccomp", ok, why + "; the filter itself is applied per candidate worker "
                 "process by the evaluation harness, not by the sandbox"))
    return [(name, active and name not in _RUNTIME_FAILURES,
             f"failed at run time: {_RUNTIME_FAILURES[name]} (probe said: {why})"
             if name in _RUNTIME_FAILURES else why) for name, active, why in rows]


def _cgroup_rows(cg: cgroups.Available, root: bool) -> list[tuple[str, bool, str]]:
    covers = {"memory": "hard memory limit (OOM kill inside the group); ASan-compatible",
              "pids": "process-count limit (fork bombs)",
              "kill": "kill every process of the run at the end, wait until none is left",
              "cpu": "CPU time of the whole tree, measured from outside"}
    off = {"memory": "NO memory limit",
           "pids": "fork bombs only stopped by " + ("the timeout" if root else
                                                   "RLIMIT_NPROC and the timeout"),
           "kill": "the pid namespace (or the init, as subreaper) ends the tree",
           "cpu": "the init's getrusage(RUSAGE_CHILDREN) gives the CPU time"}
    rows = []
    for function in cgroups.FUNCTIONS:
        got = cg.provider(function)
        if got:
            rows.append((f"cgroup-{function}", True, f"{got[0]}: {covers[function]} "
                         f"({got[1]})"))
        else:
            rows.append((f"cgroup-{function}", False, f"{cg.why_not(function)}; "
                         f"{off[function]}"))
    return rows


def missing_layers() -> list[tuple[str, str]]:
    """Important layers that are off here: (name, why). The loop prints these at start."""
    layers = {name: (active, why) for name, active, why in describe_layers()}
    important = ["pid-namespace", "net-namespace", "mount-namespace", "home-hidden",
                 "keys-hidden", "work-dir", "cgroup-memory"]
    if os.geteuid() == 0:
        important.append("cgroup-pids")  # non-root callers have RLIMIT_NPROC
    if not layers["pid-namespace"][0]:
        important.append("cgroup-kill")
    important += [n for n in _RUNTIME_FAILURES if n not in important]
    return [(n, layers[n][1]) for n in important if n in layers and not layers[n][0]]
