"""The seccomp assembler and the Python worker policy.

Two levels: a tiny classic-BPF interpreter runs the assembled programs for both
architectures on made-up system calls (so aarch64 is checked on an x86_64 host too), and
forked children install the real policy and try what it forbids.
"""

from __future__ import annotations

import os
import signal
import struct
from collections.abc import Callable

import pytest

from ratchetloop import seccomp
from ratchetloop.seccomp import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SYSCALLS,
    Rule,
    assemble,
    python_worker_policy,
)

KILL, ALLOW = SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ALLOW


def run_bpf(program: bytes, nr: int, arch: str, args: tuple[int, ...] = ()) -> int:
    """Interpret the classic-BPF subset the assembler emits on one seccomp_data."""
    audit = seccomp.AUDIT_ARCH.get(arch, 0x40000003)  # unknown: i386's audit arch
    full = [a & 0xFFFF_FFFF_FFFF_FFFF for a in args] + [0] * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, audit, 0, *full)
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == seccomp.BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == seccomp.BPF_RET_K:
            return k
        elif code == seccomp.BPF_JEQ_K:
            pc += jt if acc == k else jf
        elif code == seccomp.BPF_JGE_K:
            pc += jt if acc >= k else jf
        elif code == seccomp.BPF_JSET_K:
            pc += jt if acc & k else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_policy_decisions_on_both_architectures(arch: str) -> None:
    prog = assemble(python_worker_policy(), arch)
    nr = SYSCALLS[arch]

    def verdict(name: str, *args: int) -> int:
        return run_bpf(prog, nr[name], arch, args)

    assert verdict("read") == ALLOW and verdict("write") == ALLOW
    for name in ("clone", "clone3", "execve", "kill", "tgkill", "rt_sigaction", "setitimer",
                 "socket", "ptrace", "sched_setaffinity", "unlinkat", "openat2", "bpf",
                 "io_uring_setup", "memfd_create", "seccomp", "process_vm_writev"):
        assert verdict(name) == KILL, name
    assert verdict("openat", -100, 0, os.O_RDONLY | os.O_CLOEXEC) == ALLOW
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND,
                  os.O_RDONLY | os.O_CREAT | os.O_EXCL):
        assert verdict("openat", -100, 0, flags) == KILL, oct(flags)
    assert verdict("openat", -100, 0, (1 << 32) | os.O_RDONLY) == ALLOW  # low 32 bits only
    assert verdict("prctl", seccomp.PR_SET_VMA) == ALLOW
    assert verdict("prctl", seccomp.PR_SET_DUMPABLE, 1) == KILL
    assert verdict("prlimit64", 0, 7, 0, 12345) == ALLOW  # reading a limit
    assert verdict("prlimit64", 0, 7, 0x7F00_0000_0000) == KILL  # low word 0, high not
    assert verdict("prlimit64", 1, 7, 0x1000) == KILL
    assert verdict("fcntl", 3, 1) == ALLOW  # F_GETFD
    assert verdict("fcntl", 3, seccomp.F_SETLKW) == KILL
    assert verdict("ioctl", 0, seccomp.TIOCSTI) == KILL
    assert verdict("ioctl", 0, 0x5421) == ALLOW  # FIONBIO
    assert run_bpf(prog, 999_999, arch) == ALLOW  # unknown numbers: the default
    other = "aarch64" if arch == "x86_64" else "x86_64"
    assert run_bpf(prog, nr["read"], other) == KILL  # another ABI's calls
    assert run_bpf(prog, nr["read"], "i386") == KILL


def test_x32_calls_are_killed_on_x86_64() -> None:
    prog = assemble(python_worker_policy(), "x86_64")
    assert run_bpf(prog, 0x40000000 | 0, "x86_64") == KILL  # x32 read


def test_assembler_rejects_mistakes_and_supports_other_actions() -> None:
    with pytest.raises(ValueError, match="unknown system call"):
        assemble([Rule("no_such_call")], "x86_64")
    with pytest.raises(ValueError, match="two rules"):
        assemble([Rule("kill"), Rule("kill")], "x86_64")
    with pytest.raises(ValueError, match="unsupported architecture"):
        assemble([], "mips")
    assert assemble([Rule("fork")], "aarch64") == assemble([], "aarch64")  # no fork there
    eperm = SECCOMP_RET_ERRNO | 1
    prog = assemble([Rule("kill", action=eperm), Rule("fcntl", arg=1, values=(6, 7))],
                    "x86_64")
    assert len(prog) % 8 == 0
    assert run_bpf(prog, 62, "x86_64") == eperm
    assert run_bpf(prog, 72, "x86_64", (3, 7)) == KILL
    assert run_bpf(prog, 72, "x86_64", (3, 8)) == ALLOW


# --------------------------------------------------------------------------- real kernel

pytestmark_kernel = pytest.mark.skipif(
    not hasattr(os, "fork") or seccomp.native_arch() not in SYSCALLS
    or not seccomp.available(), reason="seccomp filters not available here")


def in_filtered_child(action: Callable[[], object]) -> str:
    """Fork, install the worker policy, run `action`; 'ok', 'SIGSYS', or the error."""
    program = assemble(python_worker_policy())
    libc = seccomp._libc()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_fd)
        code = 0
        try:
            seccomp.install(program, libc)
            action()
        except BaseException as exc:  # noqa: BLE001
            os.write(write_fd, f"{type(exc).__name__}: {exc}".encode()[:200])
            code = 3
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        said = r.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return "ok" if os.WEXITSTATUS(status) == 0 else said


@pytestmark_kernel
def test_reading_importing_and_computing_still_work() -> None:
    def fine() -> None:
        with open(__file__, encoding="utf-8") as f:
            assert "seccomp" in f.read()
        import decimal  # noqa: F401 - a stdlib import after the filter
        import fcntl
        import resource

        fcntl.fcntl(0, fcntl.F_GETFD)
        resource.getrlimit(resource.RLIMIT_NOFILE)
        os.sched_getaffinity(0)
        os.listdir("/proc/self/fd")
        r, w = os.pipe()
        os.write(w, b"x")
        assert os.read(r, 1) == b"x"

    assert in_filtered_child(fine) == "ok"


def _thread() -> None:
    import threading

    threading.Thread(target=lambda: None).start()


def _write_open() -> None:
    open(os.devnull, "w").close()  # even /dev/null: the flags decide


def _append_open() -> None:
    open(__file__, "a").close()


def _socket() -> None:
    import socket

    socket.socket()


def _signal_handler() -> None:
    signal.signal(signal.SIGALRM, lambda *_: None)


def _raise_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))


def _flock() -> None:
    import fcntl

    with open(__file__, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)


@pytestmark_kernel
@pytest.mark.parametrize("action", [
    os.fork, _thread, _write_open, _append_open, _socket, _signal_handler,
    lambda: signal.setitimer(signal.ITIMER_REAL, 1.0),
    lambda: os.kill(os.getppid(), 0),
    lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)),
    lambda: os.setpriority(os.PRIO_PROCESS, 0, 5),
    lambda: os.execv("/bin/true", ["true"]),
    lambda: os.unlink("/nonexistent/file"),
    lambda: os.mkdir("/nonexistent/dir"),
    _raise_limit, _flock,
], ids=["fork", "thread", "open-write", "open-append", "socket", "signal-handler",
        "setitimer", "kill", "setaffinity", "setpriority", "exec", "unlink", "mkdir",
        "setrlimit", "flock"])
def test_forbidden_calls_kill_the_process(action: Callable[[], object]) -> None:
    assert in_filtered_child(action) == "SIGSYS"


@pytestmark_kernel
def test_available_probe_leaves_the_caller_unfiltered() -> None:
    assert seccomp.available()
    with open("/proc/self/status", encoding="utf-8") as f:
        assert "Seccomp:\t0" in f.read()
