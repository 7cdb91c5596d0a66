"""A small seccomp-BPF assembler and the filter that Python benchmark workers run under.

Standard library only: the worker (harness/pyworker.py) loads this file by path, before
any candidate code exists in its process, and must not import the package.

What it is
  * `Rule`s name a system call, the action when it is made (default: kill the whole
    process with SIGSYS) and optionally a condition on one argument: some bits set
    (`any_bits`), one of some values (`values`), anything but one value (`unless`), or a
    pointer that is not NULL (`nonnull`, all 64 bits). Integer conditions look at the low
    32 bits only, which is what the kernel reads for int flags and commands.
  * `assemble(rules, arch)` turns them into classic BPF for seccomp: the architecture
    check (x86_64 or aarch64 only; any other audit arch -- i386 through int 0x80, ... --
    is killed, and so is every x32 call, nr >= 0x40000000, on x86_64), then one small block
    per rule, then the default action. `install(program)` sets no_new_privs and loads it
    (prctl); `available()` probes that in a forked child, so the caller is never filtered.
  * `python_worker_policy()`: default ALLOW, KILL_PROCESS for everything a benchmark
    worker has no business doing once its candidate is loaded:
      - threads and processes: clone, clone3, fork, vfork, execve, execveat, setsid, setpgid
      - signals and timers: kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo,
        pidfd_open/send_signal/getfd, rt_sigaction (no handlers after start-up), alarm,
        setitimer, timer_create/settime, timerfd_create/settime
      - other processes: ptrace, process_vm_readv/writev, process_madvise/mrelease,
        move_pages, migrate_pages, kcmp, prlimit64 with a new limit (it accepts a pid)
      - the CPU it was pinned to: sched_setaffinity, sched_setscheduler, sched_setparam,
        sched_setattr, setpriority, ioprio_set
      - the network: every socket call
      - the filesystem, except reading: open/openat with O_WRONLY, O_RDWR, O_CREAT,
        O_TRUNC or O_APPEND, openat2 and creat (whatever the flags), link, symlink,
        unlink, rename, mkdir, rmdir, mknod (and their *at forms), chmod/chown families,
        truncate, ftruncate, fallocate, utime families, xattr writes, flock, fcntl
        record locks, leases and dnotify, name_to_handle_at, open_by_handle_at,
        mq_open/mq_unlink, ioctl(TIOCSTI)
      - the system: mount family and the new mount API, umount2, unshare, setns,
        pivot_root, chroot, io_uring_*, bpf, perf_event_open, userfaultfd, keyctl,
        add_key, request_key, prctl (except PR_SET_VMA, which allocators use to name
        mappings), personality, seccomp, memfd_create, memfd_secret, ioperm, iopl,
        modules, kexec, reboot, clocks and time setting, hostname, syslog, acct, swap,
        quotas, fanotify, uselib, vhangup, lookup_dcookie

What it does not cover (read before trusting it)
  * It is a deny list over a default ALLOW: a system call added to the kernel after this
    table was written is allowed. Keep the list in step with new kernels.
  * Files stay readable: anything the sandbox leaves readable, the candidate can read
    (the sandbox hides $HOME and keys; non-dumpable processes hide their memory and fds).
  * Already-open descriptors keep working: a worker may write to its stdout/stderr (a log
    file) and to its own pipes; give it nothing else.
  * CPU and memory are not limited here (the sandbox's rlimits and cgroups do that), and
    a process can still waste time, allocate, read /proc, sleep and spin.
  * Argument checks see values, not memory: openat2 and clone3 pass flags in structs, so
    they are killed outright; pointer arguments are only checked for NULL.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# --------------------------------------------------------------------------- constants

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000  # | errno
SECCOMP_RET_ALLOW = 0x7FFF0000

PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_VMA = 0x53564D41
SECCOMP_MODE_FILTER = 2

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (little endian)
OFF_NR, OFF_ARCH = 0, 4


def off_arg(i: int, high: bool = False) -> int:
    return 16 + 8 * i + (4 if high else 0)


# classic BPF opcodes
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
BPF_MAXINSNS = 4096

# open(2) flags that write or create (identical on x86_64 and aarch64)
O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND = 0o1, 0o2, 0o100, 0o1000, 0o2000
WRITE_FLAGS = O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND
# fcntl commands that lock, lease or notify (the rest: dup, flags, status, pipe size, ...)
F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW, F_SETLEASE, F_NOTIFY = 6, 7, 37, 38, 1024, 1026
TIOCSTI = 0x5412

# --------------------------------------------------------------------------- syscall tables
# Only the names the policy uses. x86_64: arch/x86/entry/syscalls/syscall_64.tbl;
# aarch64: include/uapi/asm-generic/unistd.h (numbers from 424 on are shared by all arches).

_COMMON_NEW = {
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434, "clone3": 435,
    "openat2": 437, "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442,
    "quotactl_fd": 443, "memfd_secret": 447, "process_mrelease": 448, "fchmodat2": 452,
    "setxattrat": 463, "removexattrat": 466, "open_tree_attr": 467, "file_setattr": 469,
}

SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "read": 0, "write": 1, "open": 2, "ioctl": 16, "rt_sigaction": 13, "alarm": 37,
        "setitimer": 38, "socket": 41, "connect": 42, "accept": 43, "sendto": 44,
        "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "shutdown": 48, "bind": 49,
        "listen": 50, "getsockname": 51, "getpeername": 52, "socketpair": 53,
        "setsockopt": 54, "getsockopt": 55, "clone": 56, "fork": 57, "vfork": 58,
        "execve": 59, "kill": 62, "fcntl": 72, "flock": 73, "truncate": 76,
        "ftruncate": 77, "rename": 82, "mkdir": 83, "rmdir": 84, "creat": 85, "link": 86,
        "unlink": 87, "symlink": 88, "chmod": 90, "fchmod": 91, "chown": 92, "fchown": 93,
        "lchown": 94, "ptrace": 101, "syslog": 103, "setpgid": 109, "setsid": 112,
        "rt_sigqueueinfo": 129, "utime": 132, "mknod": 133, "uselib": 134,
        "personality": 135, "setpriority": 141, "sched_setparam": 142,
        "sched_setscheduler": 144, "vhangup": 153, "pivot_root": 155, "prctl": 157,
        "adjtimex": 159, "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165,
        "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170,
        "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
        "delete_module": 176, "quotactl": 179, "setxattr": 188, "lsetxattr": 189,
        "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199,
        "tkill": 200, "sched_setaffinity": 203, "lookup_dcookie": 212,
        "timer_create": 222, "timer_settime": 223, "clock_settime": 227, "tgkill": 234,
        "utimes": 235, "mq_open": 240, "mq_unlink": 241, "kexec_load": 246,
        "add_key": 248, "request_key": 249, "keyctl": 250, "ioprio_set": 251,
        "migrate_pages": 256, "openat": 257, "mkdirat": 258, "mknodat": 259,
        "fchownat": 260, "futimesat": 261, "unlinkat": 263, "renameat": 264, "linkat": 265,
        "symlinkat": 266, "fchmodat": 268, "unshare": 272, "move_pages": 279,
        "utimensat": 280, "timerfd_create": 283, "fallocate": 285, "timerfd_settime": 286,
        "accept4": 288, "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "recvmmsg": 299,
        "fanotify_init": 300, "fanotify_mark": 301, "prlimit64": 302,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "clock_adjtime": 305,
        "sendmmsg": 307, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
        "kcmp": 312, "finit_module": 313, "sched_setattr": 314, "renameat2": 316,
        "seccomp": 317, "memfd_create": 319, "kexec_file_load": 320, "bpf": 321,
        "execveat": 322, "userfaultfd": 323,
        **_COMMON_NEW,
    },
    "aarch64": {
        "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14,
        "lremovexattr": 15, "fremovexattr": 16, "lookup_dcookie": 18, "fcntl": 25,
        "ioctl": 29, "ioprio_set": 30, "flock": 32, "mknodat": 33, "mkdirat": 34,
        "unlinkat": 35, "symlinkat": 36, "linkat": 37, "renameat": 38, "umount2": 39,
        "mount": 40, "pivot_root": 41, "truncate": 45, "ftruncate": 46, "fallocate": 47,
        "chroot": 51, "fchmod": 52, "fchmodat": 53, "fchownat": 54, "fchown": 55,
        "openat": 56, "vhangup": 58, "quotactl": 60, "read": 63, "write": 64,
        "timerfd_create": 85, "timerfd_settime": 86, "utimensat": 88, "acct": 89,
        "personality": 92, "unshare": 97, "setitimer": 103, "kexec_load": 104,
        "init_module": 105, "delete_module": 106, "timer_create": 107,
        "timer_settime": 110, "clock_settime": 112, "syslog": 116, "ptrace": 117,
        "sched_setparam": 118, "sched_setscheduler": 119, "sched_setaffinity": 122,
        "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigaction": 134,
        "rt_sigqueueinfo": 138, "setpriority": 140, "reboot": 142, "setpgid": 154,
        "setsid": 157, "sethostname": 161, "setdomainname": 162, "prctl": 167,
        "settimeofday": 170, "adjtimex": 171, "mq_open": 180, "mq_unlink": 181,
        "socket": 198, "socketpair": 199, "bind": 200, "listen": 201, "accept": 202,
        "connect": 203, "getsockname": 204, "getpeername": 205, "sendto": 206,
        "recvfrom": 207, "setsockopt": 208, "getsockopt": 209, "shutdown": 210,
        "sendmsg": 211, "recvmsg": 212, "add_key": 217, "request_key": 218,
        "keyctl": 219, "clone": 220, "execve": 221, "swapon": 224, "swapoff": 225,
        "migrate_pages": 238, "move_pages": 239, "rt_tgsigqueueinfo": 240,
        "perf_event_open": 241, "accept4": 242, "recvmmsg": 243, "prlimit64": 261,
        "fanotify_init": 262, "fanotify_mark": 263, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "clock_adjtime": 266, "setns": 268, "sendmmsg": 269,
        "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "finit_module": 273, "sched_setattr": 274, "renameat2": 276, "seccomp": 277,
        "memfd_create": 279, "bpf": 280, "execveat": 281, "userfaultfd": 282,
        "kexec_file_load": 294,
        **_COMMON_NEW,
    },
}

# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """`action` when `syscall` is made and the (optional) argument condition holds."""

    syscall: str
    action: int = SECCOMP_RET_KILL_PROCESS
    arg: int = 0  # which argument a condition looks at
    any_bits: int = 0  # condition: (low 32 bits of arg) & any_bits != 0
    values: tuple[int, ...] = ()  # condition: low 32 bits of arg is one of these
    unless: int | None = None  # condition: low 32 bits of arg != unless
    nonnull: bool = False  # condition: the full 64-bit arg is not 0

    @property
    def conditional(self) -> bool:
        return bool(self.any_bits or self.values or self.unless is not None or self.nonnull)


def native_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


class _Asm:
    """Classic BPF with symbolic jump targets (None = the next instruction)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def fresh(self) -> str:
        self._n += 1
        return f"L{self._n}"

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def ld(self, offset: int) -> None:
        self.code.append((BPF_LD_W_ABS, None, None, offset))

    def jump(self, op: int, k: int, jt: str | None, jf: str | None) -> None:
        self.code.append((op, jt, jf, k & 0xFFFFFFFF))

    def ret(self, k: int) -> None:
        self.code.append((BPF_RET_K, None, None, k))

    def assemble(self) -> bytes:
        out = []
        for pc, (op, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                rel = 0 if target is None else self.labels[str(target)] - pc - 1
                if not 0 <= rel <= 255:
                    raise ValueError(f"BPF jump out of range at {pc}: {rel}")
                offsets.append(rel)
            out.append(struct.pack("<HBBI", op, offsets[0], offsets[1], k))
        if len(out) > BPF_MAXINSNS:
            raise ValueError(f"BPF program too long: {len(out)} instructions")
        return b"".join(out)


def assemble(rules: Iterable[Rule], arch: str | None = None,
             default: int = SECCOMP_RET_ALLOW) -> bytes:
    """The seccomp program for `arch` (default: this machine): arch check, rules, default.

    Names missing from the arch's table are skipped (e.g. `fork` on aarch64, which has
    only clone); a name unknown to every table is an error, so typos do not pass silently.
    """
    arch = arch or native_arch()
    if arch not in SYSCALLS:
        raise ValueError(f"seccomp: unsupported architecture {arch!r}")
    table = SYSCALLS[arch]
    known = set().union(*SYSCALLS.values())
    asm = _Asm()
    asm.ld(OFF_ARCH)
    asm.jump(BPF_JEQ_K, AUDIT_ARCH[arch], "arch_ok", None)
    asm.ret(SECCOMP_RET_KILL_PROCESS)  # another ABI (i386 via int 0x80, ...)
    asm.label("arch_ok")
    asm.ld(OFF_NR)
    if arch == "x86_64":
        asm.jump(BPF_JGE_K, X32_SYSCALL_BIT, None, "native")
        asm.ret(SECCOMP_RET_KILL_PROCESS)  # x32 ABI
        asm.label("native")
    seen: set[str] = set()
    for rule in rules:
        if rule.syscall not in known:
            raise ValueError(f"seccomp: unknown system call {rule.syscall!r}")
        if rule.syscall not in table:
            continue
        if rule.syscall in seen:
            raise ValueError(f"seccomp: two rules for {rule.syscall!r}")
        seen.add(rule.syscall)
        _emit_rule(asm, rule, table[rule.syscall])
    asm.ret(default)
    return asm.assemble()


def _emit_rule(asm: _Asm, rule: Rule, nr: int) -> None:
    """One self-contained block; A holds nr on entry and on the not-this-syscall exit."""
    skip, act, allow = asm.fresh(), asm.fresh(), asm.fresh()
    asm.jump(BPF_JEQ_K, nr, None, skip)
    if rule.conditional:
        asm.ld(off_arg(rule.arg))
        if rule.any_bits:
            asm.jump(BPF_JSET_K, rule.any_bits, act, allow)
        elif rule.values:
            for value in rule.values:
                asm.jump(BPF_JEQ_K, value, act, None)
            asm.jump(BPF_JEQ_K, 0, allow, allow)  # unconditional jump
        elif rule.unless is not None:
            asm.jump(BPF_JEQ_K, rule.unless, allow, act)
        else:  # nonnull: low word, then high word
            asm.jump(BPF_JEQ_K, 0, None, act)
            asm.ld(off_arg(rule.arg, high=True))
            asm.jump(BPF_JEQ_K, 0, allow, act)
    asm.label(act)
    asm.ret(rule.action)
    if rule.conditional:
        asm.label(allow)
        asm.ret(SECCOMP_RET_ALLOW)
    asm.label(skip)


# --------------------------------------------------------------------------- the policy

KILL_ALWAYS = (
    # threads and processes
    "clone", "clone3", "fork", "vfork", "execve", "execveat", "setsid", "setpgid",
    # signals and timers
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open",
    "pidfd_send_signal", "pidfd_getfd", "rt_sigaction", "alarm", "setitimer",
    "timer_create", "timer_settime", "timerfd_create", "timerfd_settime",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise",
    "process_mrelease", "move_pages", "migrate_pages", "kcmp",
    # scheduling: the worker stays on the CPU it was pinned to, at its priority
    "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr",
    "setpriority", "ioprio_set",
    # network
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "sendto",
    "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "getsockname",
    "getpeername", "setsockopt", "getsockopt",
    # filesystem writes
    "openat2", "creat", "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat",
    "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "mknod", "mknodat",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "truncate", "ftruncate", "fallocate", "utime", "utimes", "utimensat", "futimesat",
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr", "lremovexattr",
    "fremovexattr", "removexattrat", "file_setattr", "flock", "name_to_handle_at",
    "open_by_handle_at", "mq_open", "mq_unlink",
    # the system
    "mount", "umount2", "unshare", "setns", "pivot_root", "chroot", "open_tree",
    "open_tree_attr", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "personality",
    "seccomp", "memfd_create", "memfd_secret", "ioperm", "iopl", "init_module",
    "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "clock_settime", "clock_adjtime", "settimeofday", "adjtimex", "sethostname",
    "setdomainname", "syslog", "acct", "swapon", "swapoff", "quotactl", "quotactl_fd",
    "fanotify_init", "fanotify_mark", "uselib", "vhangup", "lookup_dcookie",
)


def python_worker_policy() -> list[Rule]:
    """The rules for a benchmark worker once its candidate is about to load (see module doc)."""
    rules = [Rule(name) for name in KILL_ALWAYS]
    rules += [
        Rule("open", arg=1, any_bits=WRITE_FLAGS),
        Rule("openat", arg=2, any_bits=WRITE_FLAGS),
        Rule("fcntl", arg=1, values=(F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW,
                                     F_SETLEASE, F_NOTIFY)),
        Rule("ioctl", arg=1, values=(TIOCSTI,)),
        Rule("prctl", arg=0, unless=PR_SET_VMA),
        Rule("prlimit64", arg=2, nonnull=True),
    ]
    return rules


# --------------------------------------------------------------------------- installing


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg2: int = 0) -> None:
    ulong = ctypes.c_ulong
    if libc.prctl(ctypes.c_int(option), ulong(arg2), ulong(0), ulong(0), ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def set_dumpable(flag: bool) -> None:
    """prctl(PR_SET_DUMPABLE): 0 hides this process's memory and /proc/<pid>/fd from
    every process without CAP_SYS_PTRACE, same uid included."""
    _prctl(_libc(), PR_SET_DUMPABLE, 1 if flag else 0)


def make_undumpable() -> bool:
    """Keep this process's memory out of reach of other processes of the same user: a
    non-dumpable process cannot be ptraced and its /proc/<pid>/mem, environ and fd/ cannot
    be opened without CAP_SYS_PTRACE (sandboxed children never have it). The loop holds API
    keys, the evaluator the result channel; both call this first. Lost on exec. False where
    the kernel has no prctl (not Linux), which is not an error."""
    try:
        set_dumpable(False)
        return True
    except (OSError, AttributeError):
        return False


def install(program: bytes, libc: ctypes.CDLL | None = None) -> None:
    """Load `program` for this process (no_new_privs first); raises OSError on failure.

    Irreversible, and inherited by every child. Call it from a process that has no
    other threads (seccomp filters apply per thread unless synchronised).
    """
    if not program or len(program) % 8:
        raise ValueError("seccomp program must be a non-empty list of 8-byte instructions")
    libc = libc or _libc()
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    ulong = ctypes.c_ulong
    if libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ulong(SECCOMP_MODE_FILTER),
                  ctypes.byref(prog), ulong(0), ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {os.strerror(err)}")


def available(rules: Sequence[Rule] | None = None) -> bool:
    """Whether a filter (by default the worker policy) loads here; probed in a forked child."""
    try:
        program = assemble(python_worker_policy() if rules is None else rules)
    except ValueError:
        return False
    libc = _libc()  # dlopen before fork: the child must not take the loader's locks
    # SIGINT blocked across the fork: a Ctrl-C to the process group must not land in the
    # child's Python at-fork hooks (random reseeds there), which print a traceback for it;
    # the parent takes a pending one when it unblocks
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pid = -1
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                install(program, libc)
                code = 0
            finally:
                os._exit(code)
    finally:
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
