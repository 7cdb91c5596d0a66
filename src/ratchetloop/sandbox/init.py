"""The sandbox's init: the first process inside the namespaces, before the command.

Cold: run as `python -I -S .../sandbox/init.py --init CONFIG` (CONFIG: the marshalled
config, in hex; by file path, so it works whatever the command's environment is) under
`unshare`. Warm: `--zygote FD` starts a server that forks, per command, what `unshare` does
and then this same init (`zygote_main`). Standard library only, and few imports (each
costs start-up time on every cold run): it must not import the ratchetloop package, which
may not even be reachable once the filesystem view is built.

It builds the filesystem view (read-only everything, private /tmp and /run, minimal /dev,
$HOME hidden, a private writable view of the work dir, read-only paths inside it, keys
files covered), drops every capability, forks the command (handing it the result fd as
fd 3 when asked), reaps orphans as subreaper, kills what is left of the tree when the
command exits, reports "<exit|signal|error> <n> cpu <seconds> rss <KiB>" on the status fd,
and copies declared artefacts back to the real work dir.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

# Imported where needed (json, re, shutil, fnmatch, pathlib cost milliseconds of start-up
# on every cold run; most runs never need them).

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
ARTEFACT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG = 1


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


def _read_text(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def artefact_name_ok(name: str) -> bool:
    """Plain names only: [A-Za-z0-9_.-], not starting with a dot or a dash."""
    return bool(name) and name[0] not in ".-" and set(name) <= ARTEFACT_CHARS


def _mountinfo() -> Iterator[tuple[str, int]]:
    for line in _read_text("/proc/self/mountinfo").splitlines():
        fields = line.split()
        point = fields[4]
        if "\\" in point:
            import re
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), point)
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
        _touch(f"/dev/{n}")
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


def _unstage(libc: ctypes.CDLL, path: str = STAGE) -> None:
    """Make a staging mount unreachable: what we keep of it is reachable by our fds only.

    Covered by an empty read-only tmpfs rather than unmounted: a lazy unmount waits for an
    RCU grace period (milliseconds on every run), and nobody in the view holds the
    capability to uncover it (in a user namespace of its own the copies are locked
    together, as for the hidden $HOME). It only ever holds the run's own writes.
    """
    _mount(libc, "tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "size=4k,mode=0")


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

    import shutil
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
    where = STAGE + "-rw"
    os.mkdir(where, 0o700)
    _mount(libc, f"/proc/self/fd/{fd}", where, None, MS_BIND)
    _mount(libc, None, where, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    handle = os.open(where, os.O_PATH | os.O_DIRECTORY)
    # A writable way into the real dir: detached outright (not just covered), whatever
    # the lazy unmount's grace period costs (runs that declare artefacts only).
    _umount(libc, where)
    os.rmdir(where)
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
        _touch(path)
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
    import fnmatch
    total = 0
    for name in sorted(os.listdir(view.src_fd)):
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if not artefact_name_ok(name):
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


def _wait_for(pid: int) -> int:
    """waitpid(pid) to the end, whatever signal interrupts it; the raw status."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


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
            text = _read_text(f"/proc/{entry.name}/stat")
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


def _which(name: str, path: str) -> str:
    """What execvpe(name, ..., env) would run: `path` is the command's own PATH."""
    if "/" in name:
        return name
    for d in path.split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, "No such file or directory")


def _spawn_command(cfg: Mapping[str, Any], result_fd: int | None) -> int:
    """Start the command: fd 3 is the result channel (only if asked), the status fd is
    not inherited, signals Python ignores are restored. posix_spawn, not fork + exec: the
    C library starts it without copying this Python process (a millisecond or two)."""
    status_fd = cfg["status_fd"]
    actions: list[tuple[int, ...]] = []
    if status_fd >= 0:
        actions.append((os.POSIX_SPAWN_CLOSE, status_fd))
    if result_fd is not None:
        if result_fd == RESULT_FD:
            os.set_inheritable(RESULT_FD, True)
        else:  # dup2 leaves the copy inheritable; the original is close-on-exec
            actions.append((os.POSIX_SPAWN_DUP2, result_fd, RESULT_FD))
    exe = _which(cfg["argv"][0], cfg["env"].get("PATH", os.defpath))
    # Python ignores SIGPIPE and SIGXFSZ; ignored signals survive exec: restore them.
    return os.posix_spawn(exe, cfg["argv"], cfg["env"], file_actions=actions,
                          setsigdef=(signal.SIGTERM, signal.SIGALRM, signal.SIGPIPE,
                                     signal.SIGXFSZ))


def init_main(cfg: Mapping[str, Any]) -> int:
    status_fd = cfg["status_fd"]

    def report(kind: str, value: int, cpu: float | None = None, rss_kb: int = 0) -> None:
        if status_fd >= 0:
            line = f"{kind} {value}" + (f" cpu {cpu:.6f}" if cpu is not None else "")
            line += f" rss {rss_kb}" if rss_kb > 0 else ""
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
    try:
        pid = _spawn_command(cfg, result_fd)
    except OSError as exc:
        _note(f"cannot run {cfg['argv'][0]!r}: {exc}")
        report("exit", 127, 0.0)
        return 127
    finally:
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
    rss_kb = int(usage.ru_maxrss)  # KiB: the largest RSS any process of the tree reached
    if os.WIFSIGNALED(status):
        code = 128 + os.WTERMSIG(status)
        report("signal", os.WTERMSIG(status), cpu, rss_kb)
    else:
        code = os.WEXITSTATUS(status)
        report("exit", code, cpu, rss_kb)
    if cfg["artefacts"]:
        copy_artefacts(view, cfg["artefacts"], cfg["artefact_bytes"])
    return code


def _recv_fds(sock: Any, size: int) -> tuple[bytes, list[int]]:
    """One message and the descriptors passed with it (SCM_RIGHTS)."""
    import array
    import socket
    msg, anc, _flags, _addr = sock.recvmsg(size, socket.CMSG_SPACE(16 * 4))
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(data[:len(data) - len(data) % got.itemsize])
            fds += list(got)
    return msg, fds


def zygote_main(sock_fd: int) -> int:
    """The warm sandbox's server (`Warm` in warm.py): a started, imported init that forks a
    command half per request, so no run pays for Python's start-up.

    It runs outside any namespace, as the caller; it never runs a command itself, never
    changes its own mounts, limits or credentials, and nothing a command starts can see or
    signal it (each command gets namespaces of its own, below). Per request: fork, reap,
    report "done <wait status>"; it exits when the parent hangs up.
    """
    import socket
    sock = socket.socket(fileno=sock_fd)
    sock.sendall(b"ready")
    while True:
        try:
            msg, fds = _recv_fds(sock, 1 << 20)
        except InterruptedError:
            continue
        except OSError:
            return 0
        if not msg:
            return 0  # the parent closed the warm sandbox or died
        try:
            req = marshal.loads(msg)
            pid = os.fork()
        except (ValueError, EOFError, TypeError, OSError):
            for fd in fds:
                os.close(fd)
            sock.sendall(b"done -1")
            continue
        if pid == 0:
            code = 125
            try:
                sock.close()
                code = _command_half(req, fds)
            except BaseException as exc:  # noqa: BLE001 - never return into the server loop
                _note(f"setup failed: warm sandbox: {exc!r}")
            os._exit(code)
        for fd in fds:
            os.close(fd)
        status = _wait_for(pid)
        try:
            sock.sendall(f"done {status}".encode())
        except OSError:
            return 0


def _command_half(req: Mapping[str, Any], fds: list[int]) -> int:
    """In the zygote's child, for one command: what `unshare` does on the cold path, then
    the init as pid 1 of its own fresh namespaces (user for non-root callers; pid, net,
    ipc, uts, mount), exactly as on the cold path.

    fds: stdout, stderr, status pipe, the parent's handshake socket[, result file]. The
    parent moves us into the run's fresh cgroups between "hello" and "go", so everything
    we start is in them; rlimits are set here (inherited by the whole tree).
    """
    import socket
    out, err, status_fd, sync_fd = fds[:4]
    result = fds[4] if len(fds) > 4 else None
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        if fd > 2:
            os.close(fd)
    os.setsid()
    for which, value in req["rlimits"]:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass
    sync = socket.socket(fileno=sync_fd)
    sync.sendall(b"hello")  # the parent reads our pid from the kernel (SO_PASSCRED)
    if sync.recv(16) != b"go":
        return 125
    sync.close()

    def fail(why: str) -> int:
        _note(f"setup failed: {why}")
        os.write(status_fd, b"error 1\n")
        return 125

    libc = _libc()
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(ctypes.c_int(req["unshare"])) != 0:
        return fail(f"unshare: {os.strerror(ctypes.get_errno())}")
    if req["unshare"] & CLONE_NEWUSER:  # as `unshare --map-root-user`: us -> root, only us
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                               ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
        except OSError as exc:
            return fail(f"user namespace map: {exc}")
    cfg = dict(req["cfg"], status_fd=status_fd, result_fd=result)
    pid = os.fork()
    if pid == 0:  # pid 1 of the new pid namespace: when it exits, the namespace dies
        code = 125
        try:
            libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
            code = init_main(cfg)
        except BaseException as exc:  # noqa: BLE001 - as the cold init's __main__
            _note(f"init crashed: {exc!r}")
        os._exit(code)
    os.close(status_fd)
    if result is not None:
        os.close(result)
    status = _wait_for(pid)
    if os.WIFSIGNALED(status):  # as unshare does: die the way the init died
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--init", "--zygote"):
        try:
            if sys.argv[1] == "--zygote":
                sys.exit(zygote_main(int(sys.argv[2])))
            sys.exit(init_main(marshal.loads(bytes.fromhex(sys.argv[2]))))
        except BaseException as exc:  # noqa: BLE001 - the init must never hang or spew
            if isinstance(exc, SystemExit):
                raise
            print(f"ratchet sandbox: init crashed: {exc!r}", file=sys.stderr, flush=True)
            os._exit(125)
    print("usage: init.py --init CONFIG | --zygote FD (internal to ratchetloop.sandbox)",
          file=sys.stderr)
    sys.exit(2)
