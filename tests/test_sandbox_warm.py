"""The warm sandbox (sandbox.Warm): many commands through one pre-started init, and nothing
one command does reaches the next.

tests/test_sandbox_hostile.py runs every hostile program through both `sandbox.run` and
`Warm().run`; these tests are about what only the warm path has: several commands in a row
through one zygote (processes, files, SysV IPC, sockets, the result channel, CPU and OOM
accounting must not carry over), the zygote itself (out of the commands' reach; dead or
killed, it is replaced), timeouts, concurrent callers, and the caller being killed.
"""

from __future__ import annotations

import os
import platform
import secrets
import select
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratchetloop import sandbox
from ratchetloop.sandbox import Limits, cgroups

LAYERS = {name: active for name, active, _ in sandbox.describe_layers()}
WHY_COLD = sandbox.Warm().cold_why

pytestmark = pytest.mark.skipif(WHY_COLD is not None, reason=f"no warm path here: {WHY_COLD}")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def survivors(marker: str) -> list[str]:
    """Processes (anywhere on the host) whose command line mentions `marker`."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(d.name)
            except OSError:
                pass
    return found


def zygote_pid(warm: sandbox.Warm) -> int:
    holder = warm._holder  # the test looks at the one private fact it needs
    assert len(holder) == 1
    return holder[0].proc.pid


def warm_groups() -> list[Path]:
    avail = cgroups.available()
    parents = [*avail.v1.values(), *([avail.v2.parent] if avail.v2 else [])]
    prefix = f"ratchet-warm-{os.getpid()}-"
    return [p for parent in parents for p in parent.iterdir() if p.name.startswith(prefix)]


@pytest.fixture
def warm() -> Iterator[sandbox.Warm]:
    box = sandbox.Warm()
    try:
        yield box
        assert box.broken is None
    finally:
        box.close()
    assert warm_groups() == []


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    (d / "input.txt").write_text("original\n")
    return d


def test_a_warm_run_is_a_cold_run_minus_the_start(warm: sandbox.Warm, work: Path) -> None:
    cmd = ["/bin/sh", "-c", "cat input.txt; echo r >&3; echo e >&2; env | sort; exit 3"]
    kwargs = dict(cwd=work, timeout=20, result_channel=True, readonly_inside=["input.txt"])
    cold = sandbox.run(cmd, **kwargs)  # type: ignore[arg-type]
    hot = warm.run(cmd, **kwargs)  # type: ignore[arg-type]
    assert hot.warm and not cold.warm
    for field in ("returncode", "stdout", "stderr", "result", "layers", "dropped_env",
                  "timed_out", "error", "signal"):
        assert getattr(hot, field) == getattr(cold, field), field
    assert hot.returncode == 3 and hot.result == b"r\n" and hot.cpu_seconds is not None


def test_a_background_process_does_not_outlive_its_command(
        warm: sandbox.Warm, work: Path) -> None:
    marker = f"lingerer-{secrets.token_hex(6)}"
    first = warm.run(py(f"""
        import os, signal, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                    signal.signal(s, signal.SIG_IGN)
                os.execvp("sleep", ["sleep", "300", "{marker}"])
            os._exit(0)
        time.sleep(0.2)
        print("planted")
    """), cwd=work, timeout=20)
    assert first.ok and first.warm and "planted" in first.stdout, first.stderr
    assert survivors(marker) == []
    second = warm.run(py(f"""
        import os
        seen = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    seen.append((int(p), open(f"/proc/{{p}}/cmdline", "rb").read()))
                except OSError:
                    pass
        print(sorted(pid for pid, _ in seen))
        print(any(b"{marker[:8]}" + b"{marker[8:]}" in c for _, c in seen))
    """), cwd=work, timeout=20)
    assert second.ok and second.warm, second.stderr
    pids, found = second.stdout.split("\n")[:2]
    assert found == "False"
    assert eval(pids) == [1, 2], pids  # its own init and itself: a fresh pid namespace


def test_files_of_one_command_are_invisible_to_the_next(warm: sandbox.Warm, work: Path) -> None:
    write = warm.run(["/bin/sh", "-c", """
        echo changed > input.txt; echo new > new.txt; mkdir -p sub; echo x > sub/f
        for d in /tmp /dev/shm /dev "$HOME"; do echo left > "$d/left-behind"; done
        ls /tmp /dev/shm /dev | grep -c left-behind
    """], cwd=work, timeout=20)
    assert write.ok and write.warm and write.stdout.strip() == "3", write.stderr
    look = warm.run(["/bin/sh", "-c", """
        cat input.txt; ls -a; ls -a /tmp /dev/shm; ls /dev | grep left || echo clean
    """], cwd=work, timeout=20)
    assert look.ok and look.warm, look.stderr
    assert look.stdout.startswith("original\n")
    assert "new.txt" not in look.stdout and "sub" not in look.stdout.split()
    assert "left-behind" not in look.stdout and "clean" in look.stdout
    assert sorted(p.name for p in work.iterdir()) == ["input.txt"]
    assert (work / "input.txt").read_text() == "original\n"


@pytest.mark.skipif(not LAYERS["ipc/uts-namespaces"], reason="no ipc namespace here")
def test_sysv_ipc_and_abstract_sockets_do_not_carry_over(
        warm: sandbox.Warm, work: Path) -> None:
    name = f"ratchet-warm-{secrets.token_hex(4)}"
    plant = warm.run(py(f"""
        import os, socket, subprocess, time
        for kind in ("-M", "-Q", "-S"):
            subprocess.run(["ipcmk", kind, "4096" if kind == "-M" else "1"], check=True)
        if os.fork() == 0:  # a listener that would outlive the command if it could
            s = socket.socket(socket.AF_UNIX)
            s.bind("\\0{name}")
            s.listen()
            time.sleep(300)
        time.sleep(0.3)
        c = socket.socket(socket.AF_UNIX)
        c.connect("\\0{name}")
        print("listening")
        print(subprocess.run(["ipcs"], capture_output=True, text=True).stdout.count("0x"))
    """), cwd=work, timeout=20)
    assert plant.ok and plant.warm and "listening" in plant.stdout, plant.stderr
    assert int(plant.stdout.split()[-1]) >= 3
    look = warm.run(py(f"""
        import socket, subprocess
        print(subprocess.run(["ipcs"], capture_output=True, text=True).stdout.count("0x"))
        try:
            socket.socket(socket.AF_UNIX).connect("\\0{name}")
            print("connected")
        except OSError as exc:
            print(type(exc).__name__)
    """), cwd=work, timeout=20)
    assert look.ok and look.warm, look.stderr
    assert look.stdout.split() == ["0", "ConnectionRefusedError"]


def test_the_result_channel_is_fresh_for_every_command(warm: sandbox.Warm, work: Path) -> None:
    first = warm.run(["/bin/sh", "-c", "echo first >&3"], cwd=work, timeout=20,
                     result_channel=True)
    second = warm.run(["/bin/sh", "-c", "true"], cwd=work, timeout=20, result_channel=True)
    third = warm.run(["/bin/sh", "-c", "echo third >&3"], cwd=work, timeout=20,
                     result_channel=True)
    none = warm.run(["/bin/sh", "-c", "echo x >&3 || echo closed"], cwd=work, timeout=20)
    assert (first.result, second.result, third.result) == (b"first\n", b"", b"third\n")
    assert none.result is None and "closed" in none.stdout
    assert all(r.warm for r in (first, second, third, none))


def test_a_timeout_kills_the_tree_and_the_sandbox_stays_warm(
        warm: sandbox.Warm, work: Path) -> None:
    marker = f"timeout-{secrets.token_hex(6)}"
    linger = f"sh -c 'sleep 300; :' {marker}"  # the shell stays, its argv names the marker
    slow = warm.run(["/bin/sh", "-c", f"{linger} & setsid {linger} & echo up; wait"],
                    cwd=work, timeout=1.0)
    assert slow.timed_out and slow.warm and slow.returncode is None and "up" in slow.stdout
    assert slow.wall_seconds < 6
    assert survivors(marker) == []
    before = zygote_pid(warm)
    after = warm.run(["/bin/sh", "-c", "echo fine"], cwd=work, timeout=20)
    assert after.ok and after.warm and after.stdout == "fine\n"
    assert zygote_pid(warm) == before


def test_commands_cannot_see_or_signal_the_zygote(warm: sandbox.Warm, work: Path) -> None:
    first = warm.run(["true"], cwd=work, timeout=20)
    zygote = zygote_pid(warm)
    attack = warm.run(py(f"""
        import os, signal
        for target in (1, -1, {zygote}, os.getppid()):
            for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                try:
                    os.kill(target, sig)
                except OSError as exc:
                    print(target, sig, type(exc).__name__)
        print("still here")
    """), cwd=work, timeout=20)
    # kill(-1) from inside takes the command's own namespace down with it; whatever it
    # manages, the zygote (outside, invisible) is untouched and serves the next command.
    assert first.ok and attack.warm and not attack.timed_out and attack.error is None
    assert os.path.exists(f"/proc/{zygote}")
    again = warm.run(["/bin/sh", "-c", "echo fine"], cwd=work, timeout=20)
    assert again.ok and again.warm and zygote_pid(warm) == zygote


def test_a_dead_zygote_is_replaced(warm: sandbox.Warm, work: Path) -> None:
    assert warm.run(["true"], cwd=work, timeout=20).warm
    first = zygote_pid(warm)
    os.kill(first, signal.SIGKILL)
    res = warm.run(["/bin/sh", "-c", "echo fine"], cwd=work, timeout=20)
    assert res.ok and res.warm and res.stdout == "fine\n"
    assert zygote_pid(warm) != first
    # killed while a command runs: that run ends (however it ends) and the next is warm
    second = zygote_pid(warm)
    timer = threading.Timer(0.5, os.kill, (second, signal.SIGKILL))
    timer.start()
    try:
        mid = warm.run(["/bin/sh", "-c", "sleep 1.5; echo done"], cwd=work, timeout=20)
    finally:
        timer.join()
    assert not mid.timed_out and mid.returncode in (0, None)
    res = warm.run(["/bin/sh", "-c", "echo fine"], cwd=work, timeout=20)
    assert res.ok and res.warm and zygote_pid(warm) not in (first, second)


@pytest.mark.skipif(not LAYERS["cgroup-cpu"], reason="no cgroup cpu accounting here")
def test_cpu_time_is_per_command(warm: sandbox.Warm, work: Path) -> None:
    burn = warm.run(py("""
        import time
        end = time.process_time() + 0.4
        while time.process_time() < end:
            pass
    """), cwd=work, timeout=30)
    idle = warm.run(["true"], cwd=work, timeout=20)
    assert burn.ok and idle.ok and burn.warm and idle.warm
    assert burn.cpu_seconds is not None and burn.cpu_seconds >= 0.35
    assert idle.cpu_seconds is not None and idle.cpu_seconds < 0.2


@pytest.mark.skipif(not LAYERS["cgroup-memory"], reason="no memory cgroup here")
def test_oom_kills_are_per_command(warm: sandbox.Warm, work: Path) -> None:
    small = Limits(memory_bytes=96 << 20)
    hog = warm.run(py("""
        blocks = []
        for _ in range(64):
            blocks.append(bytearray(16 << 20))
    """), cwd=work, timeout=60, limits=small)
    after = warm.run(["true"], cwd=work, timeout=20, limits=small)
    assert hog.warm and hog.oom_killed and not hog.ok
    assert after.warm and after.ok and not after.oom_killed


@pytest.mark.skipif(not LAYERS["cgroup-pids"], reason="no pids cgroup here")
def test_each_set_of_limits_gets_its_own_groups(warm: sandbox.Warm, work: Path) -> None:
    read_max = ["/bin/sh", "-c", """
        for line in $(cat /proc/self/cgroup); do
          case "$line" in
            *:pids:*) cat "/sys/fs/cgroup/pids${line##*:}/pids.max" ;;
            0::*) f="/sys/fs/cgroup/unified${line#0::}/pids.max"; [ -f "$f" ] && cat "$f" ;;
          esac
        done
    """]
    default = warm.run(read_max, cwd=work, timeout=20)
    few = warm.run(read_max, cwd=work, timeout=20, limits=Limits(processes=17))
    assert default.warm and few.warm
    assert default.stdout.split()[:1] == ["512"] and few.stdout.split()[:1] == ["17"]


def test_a_second_caller_at_the_same_time_runs_cold(warm: sandbox.Warm, work: Path) -> None:
    results: list[sandbox.SandboxResult] = []

    def one() -> None:
        results.append(warm.run(["/bin/sh", "-c", "sleep 0.5; echo ok"], cwd=work, timeout=20))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == ["ok\n", "ok\n"]
    assert sorted(r.warm for r in results) == [False, True]


def test_isolate_false_and_missing_dirs_behave_as_cold(warm: sandbox.Warm, tmp_path: Path) -> None:
    res = warm.run(["true"], cwd=tmp_path, timeout=20, isolate=False)
    assert res.ok and not res.warm
    res = warm.run(["true"], cwd=tmp_path / "nope", timeout=20)
    assert res.error and not res.ok


@pytest.mark.skipif(platform.machine() != "x86_64", reason="raw keyctl syscall numbers")
@pytest.mark.skipif(os.geteuid() == 0, reason="as root every run shares root's own user "
                    "keyring (cold too); test_sandbox_nonroot runs this as a user")
def test_the_user_keyring_does_not_carry_over(warm: sandbox.Warm, work: Path) -> None:
    add = warm.run(py(KEYRING.format(action="add")), cwd=work, timeout=20)
    look = warm.run(py(KEYRING.format(action="search")), cwd=work, timeout=20)
    assert add.warm and add.stdout.strip() == "added", add.stderr
    assert look.warm and look.stdout.strip() == "absent", look.stdout + look.stderr


KEYRING = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
USER_KEYRING = ctypes.c_int(-4)
if "{action}" == "add":
    ok = libc.syscall(248, b"user", b"ratchet-warm-test", b"secret", 6, USER_KEYRING) > 0
    print("added" if ok else "add failed %d" % ctypes.get_errno())
else:
    found = libc.syscall(250, 10, USER_KEYRING, b"user", b"ratchet-warm-test", 0) > 0
    print("FOUND" if found else "absent")
"""


def test_the_tree_dies_on_time_even_if_the_caller_is_killed(tmp_path: Path) -> None:
    """SIGKILL the process that holds the warm sandbox mid-run: the command still dies at
    its deadline (the init's own alarm), and the zygote exits with its caller."""
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    marker = f"orphaned-warm-{os.getpid()}-{secrets.token_hex(4)}"
    caller = subprocess.Popen(py(f"""
        from pathlib import Path
        from ratchetloop import sandbox
        box = sandbox.Warm()
        res = box.run(["true"], cwd=Path({str(tmp_path)!r}), timeout=20)
        assert res.warm, res
        print(box._holder[0].proc.pid, flush=True)
        box.run(["sh", "-c", "echo up > ready; sleep 300; echo {marker}"],
                cwd=Path({str(tmp_path)!r}), timeout=0.5,
                limits=sandbox.Limits(work_bytes=None))  # the real dir: our fifo
    """), stdout=subprocess.PIPE, text=True)
    try:
        assert caller.stdout is not None
        zygote = int(caller.stdout.readline())
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert select.select([rfd], [], [], 30)[0], "sandboxed command never started"
            assert os.read(rfd, 16) == b"up\n"
        finally:
            os.close(rfd)
        victims = [int(p) for p in survivors(marker)]
        assert victims
        fds = [os.pidfd_open(pid) for pid in [*victims, zygote]]
        caller.kill()
        caller.wait()
        for fd in fds:  # deadline = timeout + 5 s
            assert select.select([fd], [], [], 20)[0], "a process outlived its deadline"
            os.close(fd)
    finally:
        caller.kill()
        caller.wait()
