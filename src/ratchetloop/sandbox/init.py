"""The sandbox's init: the first process inside the namespaces, before the command.

Run as `python -I -S .../sandbox/init.py --init CONFIG_JSON` (by file path, so it works
whatever the command's environment is). Standard library only: it must not import the
ratchetloop package, which may not even be reachable once the filesystem view is built.

It builds the filesystem view (read-only everything, private /tmp and /run, minimal /dev,
$HOME hidden, a private writable view of the work dir, read-only paths inside it, keys
files covered), drops every capability, forks the command (handing it the result fd as
fd 3 when asked), reaps orphans as subreaper, kills what is left of the tree when the
command exits, reports "<exit|signal|error> <n> cpu <seconds>" on the status fd, and copies
declared artefacts back to the real work dir.
"""

from __future__ import annotations

import ctypes
import fnmatch
import json
import os
import re
import resource
import shutil
import signal
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
_MOUNT_OPTS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
               "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 38, 24, 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
PR_SET_DUMPABLE, MNT_DETACH = 4, 2
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
RESULT_FD = 3
STAGE = "/dev/.ratchet-stage"
# Artefact names: plain, no leading dot (.git, .gitconfig) or dash (option injection).
ARTEFACT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


class SetupError(Exception):
    """The view could not be built: the run fails closed, the command never starts."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc: ctypes.CDLL, src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        raise SetupError(f"mount {src} -> {target} ({fstype}): {os.strerror(e)}")


def _umount(libc: ctypes.CDLL, target: str) -> None:
    if libc.umount2(target.encode(), MNT_DETACH) != 0:
        raise SetupError(f"umount {target}: {os.strerror(ctypes.get_errno())}")


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


def _hidden_dirs(cfg: Mapping[str, Any]) -> list[str]:
    """Dirs covered by an empty tmpfs: /tmp, /run, the homes; none nested in another (a
    later mount on a path inside an already-covered dir would fail: it no longer exists)."""
    out: list[str] = []
    for h in sorted({"/tmp", "/run", *cfg["homes"]}, key=len):
        if h in ("", "/") or not os.path.isdir(h) or os.path.islink(h):
            continue
        if not any(_under(h, o) for o in out):
            out.append(h)
    return out


class WorkView:
    """Handles the init keeps on the work dir: where the run's writes are (`src_fd`, not
    reachable from the view, so nothing mounted over the view changes what it reads) and a
    writable handle on the real dir (`rw_fd`) to copy artefacts back to."""

    def __init__(self) -> None:
        self.src_fd: int | None = None
        self.rw_fd: int | None = None


def setup_fs(cfg: Mapping[str, Any]) -> WorkView:
    """Build the filesystem view described in the module docstring."""
    libc = _libc()
    work = cfg["cwd"]
    hide = _hidden_dirs(cfg)
    if work == "/" or any(_under(h, work) for h in hide):
        raise SetupError(f"the work dir {work} contains a hidden dir ({', '.join(hide)}): "
                         "refusing to expose it")
    # Never bind back a hidden dir or one of its ancestors: that would undo the hiding.
    keep = [p for p in cfg["keep"]
            if not _under(p, work) and not any(_under(h, p) for h in hide)]
    # Handles on everything we rebind after covering their parents with tmpfs.
    fds = {p: os.open(p, os.O_PATH) for p in [work, *keep]}
    dev_fds = {n: os.open(f"/dev/{n}", os.O_PATH) for n in DEV_NODES
               if os.path.exists(f"/dev/{n}")}
    work_st = os.stat(f"/proc/self/fd/{fds[work]}")

    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    for point, flags in _mountinfo():
        try:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except SetupError:
            if point == "/":
                raise
    if cfg["pid_ns"]:
        _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    tmp_opts = f"size={cfg['tmp_bytes']},mode=1777"
    for h in hide:
        opts = tmp_opts if h == "/tmp" else "size=1m,mode=755"
        _mount(libc, "tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    _mount(libc, "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=1m,mode=755")
    for n, fd in dev_fds.items():
        Path(f"/dev/{n}").touch()
        _mount(libc, f"/proc/self/fd/{fd}", f"/dev/{n}", None, MS_BIND)
    os.mkdir("/dev/shm")
    _mount(libc, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/dev/{name}")
    os.symlink("/proc/self/fd", "/dev/fd")
    # Bring back what must stay reachable under the hidden dirs: read-only.
    for p in keep:
        if any(_under(p, h) for h in hide):
            _bind_back(libc, fds[p], p, readonly=True)
    view = WorkView()
    if cfg["artefacts"] and cfg["work_mode"] != "real":
        view.rw_fd = _detached_rw_handle(libc, fds[work])
    os.makedirs(work, exist_ok=True)
    if cfg["work_mode"] == "overlay":
        view.src_fd = _overlay_view(libc, cfg, fds[work], work_st)
    elif cfg["work_mode"] == "copy":
        view.src_fd = _copy_view(libc, cfg, fds[work], work_st)
    else:
        _bind_back(libc, fds[work], work, readonly=False)
    for rel in cfg["readonly"]:
        _readonly_inside(libc, work, rel)
    for h in hide:  # hidden dirs stay empty and read-only (except the private /tmp)
        if h != "/tmp":
            _mount(libc, None, h, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _cover_files(libc, cfg["hide_files"])
    for fd in [*fds.values(), *dev_fds.values()]:
        os.close(fd)
    return view


def _stage_tmpfs(libc: ctypes.CDLL, size: int, mode: int) -> None:
    os.mkdir(STAGE, 0o700)
    _mount(libc, "tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode:o}")


def _unstage(libc: ctypes.CDLL) -> None:
    """Detach the staging mount: what we keep of it is reachable by our fds only."""
    _umount(libc, STAGE)
    os.rmdir(STAGE)


def _overlay_view(libc: ctypes.CDLL, cfg: Mapping[str, Any], work_fd: int,
                  st: os.stat_result) -> int:
    """overlayfs on the work dir: lower = the real dir (read-only), upper and workdir in a
    tmpfs of work_bytes. O(1) whatever the size of the work dir. Returns a handle on upper."""
    work = cfg["cwd"]
    _stage_tmpfs(libc, cfg["work_bytes"], 0o700)
    upper, scratch = f"{STAGE}/upper", f"{STAGE}/work"
    os.mkdir(upper)
    os.mkdir(scratch)
    os.chmod(upper, stat.S_IMODE(st.st_mode))
    try:  # the view's root shows upper's owner: make it the real dir's
        os.chown(upper, st.st_uid, st.st_gid)
    except OSError:
        pass  # an owner not mapped into our user namespace: keep ours
    upper_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    _mount(libc, "overlay", work, "overlay", MS_NOSUID | MS_NODEV,
           f"lowerdir=/proc/self/fd/{work_fd},upperdir={upper},workdir={scratch}")
    _unstage(libc)
    return upper_fd


def _copy_view(libc: ctypes.CDLL, cfg: Mapping[str, Any], work_fd: int,
               st: os.stat_result) -> int:
    """A tmpfs copy of the work dir (where overlayfs is not allowed): regular files, dirs
    and symlinks; not the keys files. Returns a handle on the copy's root."""
    work = cfg["cwd"]
    _stage_tmpfs(libc, cfg["work_bytes"], stat.S_IMODE(st.st_mode))
    secret = set(cfg["hide_files"])
    src = f"/proc/self/fd/{work_fd}"

    special = _only_files(links=True)

    def skip(directory: str, names: list[str]) -> list[str]:
        real = os.path.normpath(os.path.join(work, os.path.relpath(directory, src)))
        return special(directory, names) + [n for n in names if os.path.join(real, n) in secret]

    shutil.copytree(src, STAGE, symlinks=True, dirs_exist_ok=True, ignore=skip)
    root_fd = os.open(STAGE, os.O_RDONLY | os.O_DIRECTORY)
    _mount(libc, STAGE, work, None, MS_BIND)
    _mount(libc, None, work, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    _unstage(libc)
    return root_fd


def _readonly_inside(libc: ctypes.CDLL, work: str, rel: str) -> None:
    """Make work/rel read-only. Its ancestors inside the work dir are pinned (bound onto
    themselves, still writable) so they cannot be renamed away and replaced by a fake."""
    norm = os.path.normpath(rel)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or norm == ".":
        raise SetupError(f"readonly_inside path {rel!r} is not inside the work dir")
    parts = norm.split("/")
    cur = work
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        try:
            mode = os.lstat(cur).st_mode
        except FileNotFoundError:
            return  # missing paths are ignored
        if stat.S_ISLNK(mode):
            raise SetupError(f"readonly_inside path {rel!r}: {cur} is a symlink")
        last = i == len(parts) - 1
        _mount(libc, cur, cur, None, MS_BIND)
        _mount(libc, None, cur, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
               | (MS_RDONLY if last else 0))


def _cover_files(libc: ctypes.CDLL, paths: list[str]) -> None:
    """Mount an empty read-only file (or dir) over each keys file still visible."""
    empty = "/dev/.ratchet-empty"
    with open(empty, "w"):
        pass
    os.chmod(empty, 0o444)
    for path in paths:
        if not os.path.lexists(path):
            continue  # under a hidden dir, or absent: nothing to cover
        if os.path.isdir(path):
            _mount(libc, "tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY,
                   "size=4k,mode=555")
            continue
        _mount(libc, empty, path, None, MS_BIND)
        _mount(libc, None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
               | MS_NODEV)
    os.unlink(empty)


def _detached_rw_handle(libc: ctypes.CDLL, fd: int) -> int:
    """A writable handle on a directory that no path in this namespace leads to."""
    os.mkdir(STAGE, 0o700)
    _mount(libc, f"/proc/self/fd/{fd}", STAGE, None, MS_BIND)
    _mount(libc, None, STAGE, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    handle = os.open(STAGE, os.O_PATH | os.O_DIRECTORY)
    _unstage(libc)
    return handle


def _only_files(*, links: bool) -> Callable[[str, list[str]], list[str]]:
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


def copy_artefacts(view: WorkView, patterns: list[str], cap: int) -> None:
    """Copy top-level regular files matching `patterns` back to the real work dir.

    Reads only what the run wrote (overlay upper, or the tmpfs copy) through a handle the
    view's mounts cannot redirect; plain names only; symlinks, fifos, devices never; at
    most `cap` bytes in all. Problems go to stderr (the caller sees them), never raise.
    """
    if view.src_fd is None or view.rw_fd is None:
        return
    total = 0
    for name in sorted(os.listdir(view.src_fd)):
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if not ARTEFACT_NAME.match(name):
            _note(f"artefact {name!r} skipped: name not plain [A-Za-z0-9_.-]")
            continue
        try:
            if not stat.S_ISREG(os.stat(name, dir_fd=view.src_fd,
                                        follow_symlinks=False).st_mode):
                continue  # symlinks, dirs, fifos, devices, overlay whiteouts
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                          dir_fd=view.src_fd)
        except OSError:
            continue
        try:
            size = os.fstat(src).st_size
            if total + size > cap:
                _note(f"artefact {name!r} skipped: over the {cap}-byte artefact cap")
                continue
            total += size
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644,
                          dir_fd=view.rw_fd)
            try:
                left = size
                while left > 0:
                    chunk = os.read(src, min(left, 1 << 20))
                    if not chunk:
                        break
                    os.write(dst, chunk)
                    left -= len(chunk)
            finally:
                os.close(dst)
        except OSError as exc:
            _note(f"artefact {name!r} not copied back: {exc.strerror}")
        finally:
            os.close(src)


def _note(text: str) -> None:
    print(f"ratchet sandbox: {text}", file=sys.stderr, flush=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_privileges() -> None:
    """No capabilities in any set, now or after exec; no privilege gain via setuid files."""
    libc = _libc()
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise SetupError(f"capset: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        raise SetupError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def end_tree(pid_ns: bool) -> None:
    """Kill and reap every remaining descendant; returns when none is left.

    As pid 1 of a namespace, kill(-1) reaches every process in it; otherwise orphans come
    to us (subreaper) and we kill our children until there are none. Reaping everything is
    also what makes getrusage(RUSAGE_CHILDREN) count the whole tree.
    """
    pid1 = pid_ns and os.getpid() == 1
    while True:
        if pid1:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            for pid in _children(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            os.waitpid(-1, 0)  # blocks until one of them is gone
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _exec_command(cfg: Mapping[str, Any], result_fd: int | None) -> None:
    """In the forked child: hand over fd 3 (only if asked), restore signals, exec."""
    try:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # Python ignores SIGPIPE and SIGXFSZ; ignored signals survive exec: restore them.
        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        status_fd = cfg["status_fd"]
        if result_fd is not None:
            if result_fd != RESULT_FD:
                os.dup2(result_fd, RESULT_FD)
                os.close(result_fd)
            os.set_inheritable(RESULT_FD, True)
        if status_fd >= 0 and not (result_fd is not None and status_fd == RESULT_FD):
            os.close(status_fd)
        os.execvpe(cfg["argv"][0], cfg["argv"], cfg["env"])
    except OSError as exc:
        _note(f"cannot run {cfg['argv'][0]!r}: {exc}")
    os._exit(127)


def init_main(cfg: Mapping[str, Any]) -> int:
    status_fd = cfg["status_fd"]

    def report(kind: str, value: int, cpu: float | None = None) -> None:
        if status_fd >= 0:
            line = f"{kind} {value}" + (f" cpu {cpu:.6f}" if cpu is not None else "")
            try:
                os.write(status_fd, (line + "\n").encode())
            except OSError:
                pass

    view = WorkView()
    result_fd: int | None = None
    try:
        if cfg.get("result_fd") is not None:
            # A write-only description of the parent's unlinked file, for the command only.
            result_fd = os.open(f"/proc/self/fd/{cfg['result_fd']}", os.O_WRONLY | os.O_APPEND)
            os.close(cfg["result_fd"])
        if cfg["mount"]:
            view = setup_fs(cfg)
        os.chdir(cfg["cwd"])
        libc = _libc()
        libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), 0, 0, 0)
        libc.prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), 0, 0, 0)  # no ptrace, no /proc/1/fd
        drop_privileges()
    except (OSError, SetupError) as exc:
        _note(f"setup failed: {exc}")
        report("error", 1)
        return 125

    def on_term(signum: int, frame: object) -> None:
        if not cfg["pid_ns"]:  # in a pid namespace the kernel kills the rest when we exit
            end_tree(False)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    if cfg.get("deadline"):
        signal.signal(signal.SIGALRM, on_term)
        signal.setitimer(signal.ITIMER_REAL, float(cfg["deadline"]))
    pid = os.fork()
    if pid == 0:
        _exec_command(cfg, result_fd)
    if result_fd is not None:
        os.close(result_fd)
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
    end_tree(cfg["pid_ns"])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(status):
        code = 128 + os.WTERMSIG(status)
        report("signal", os.WTERMSIG(status), cpu)
    else:
        code = os.WEXITSTATUS(status)
        report("exit", code, cpu)
    if cfg["artefacts"]:
        copy_artefacts(view, cfg["artefacts"], cfg["artefact_bytes"])
    return code


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--init":
        try:
            sys.exit(init_main(json.loads(sys.argv[2])))
        except BaseException as exc:  # noqa: BLE001 - the init must never hang or spew
            if isinstance(exc, SystemExit):
                raise
            print(f"ratchet sandbox: init crashed: {exc!r}", file=sys.stderr, flush=True)
            os._exit(125)
    print("usage: init.py --init CONFIG_JSON (internal to ratchetloop.sandbox)",
          file=sys.stderr)
    sys.exit(2)
