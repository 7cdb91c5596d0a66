"""Hostile candidates, run for real through sandbox.run, each one contained.

Every test runs a small C or Python program from tests/hostile/ in a fresh work dir, checks
how it was stopped, and checks that nothing it started is still alive afterwards. Tests whose
hostile part needs a containment layer skip (with the reason) when the layer is not active;
the C programs also refuse to misbehave when they cannot see their limit, so a broken layer
can never take the shared machine down.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratchetloop import sandbox
from ratchetloop.sandbox import Limits, cgroups, probe

HOSTILE = Path(__file__).parent / "hostile"
GCC = shutil.which("gcc")
LAYERS = {name: active for name, active, _ in sandbox.describe_layers()}
WHY = {name: why for name, _, why in sandbox.describe_layers()}


def need(*layers: str) -> pytest.MarkDecorator:
    missing = [name for name in layers if not LAYERS.get(name)]
    reason = "; ".join(f"{name} not active: {WHY.get(name, '?')}" for name in missing)
    return pytest.mark.skipif(bool(missing), reason=reason or "ok")


needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc not found")


@pytest.fixture(scope="session")
def bins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GCC is None:
        pytest.skip("gcc not found")
    out = tmp_path_factory.mktemp("hostile-bin")
    for src in HOSTILE.glob("*.c"):
        if src.stem.startswith("asan_"):
            continue
        subprocess.run([GCC, "-O0", "-o", str(out / src.stem), str(src)], check=True)
    return out


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def stage(bins: Path, work: Path, name: str) -> str:
    """Copy a compiled fixture into the work dir; its path there marks its processes."""
    shutil.copy2(bins / name, work / name)
    return str(work / name)


def survivors(marker: str) -> list[str]:
    """Processes (anywhere on the host) whose command line mentions `marker`."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and "--init" not in cmd:
            found.append(f"{d.name}: {cmd}")
        elif marker in cmd:
            found.append(f"{d.name} (init): {cmd[:200]}")
    return found


def leftover_cgroups() -> list[Path]:
    prefix = f"ratchet-{os.getpid()}-"
    avail = cgroups.available()
    parents = [*avail.v1.values(), *([avail.v2.parent] if avail.v2 else [])]
    return [p for parent in parents for p in parent.iterdir() if p.name.startswith(prefix)]


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path: Path) -> Iterator[None]:
    yield
    assert survivors(str(tmp_path)) == []
    assert leftover_cgroups() == []


@pytest.fixture(autouse=True, params=["cold", "warm"])
def start(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
          nothing_left_behind: None) -> Iterator[str]:
    """Every test twice: `sandbox.run` (a cold start per run) and `sandbox.Warm().run` (a
    fork of a pre-started init per run). Warm runs must really be warm wherever the
    test leaves the warm path possible, and the warm sandbox is closed (its zygote and
    groups gone) before nothing_left_behind looks."""
    if request.param == "cold":
        yield "cold"
        return
    warm = sandbox.Warm()
    seen: list[tuple[bool, str | None]] = []

    def run(*args: Any, **kwargs: Any) -> sandbox.SandboxResult:
        res = warm.run(*args, **kwargs)
        seen.append((res.warm, warm.cold_why if kwargs.get("isolate", True) else "isolate"))
        return res

    monkeypatch.setattr(sandbox, "run", run)
    try:
        yield "warm"
        assert warm.broken is None
        assert all(was_warm or why for was_warm, why in seen), seen
        print(f"warm runs: {sum(w for w, _ in seen)} of {len(seen)}")
    finally:
        warm.close()
        monkeypatch.undo()


# ----------------------------------------------------------------- time


def test_infinite_loop_is_killed_at_the_timeout(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "spin")], cwd=work, timeout=1.0)
    assert res.timed_out and res.returncode is None and not res.ok
    assert res.wall_seconds < 5


def test_cpu_limit_stops_a_spinner_before_the_wall_clock(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "spin")], cwd=work, timeout=30,
                      limits=Limits(cpu_seconds=1))
    assert not res.timed_out
    assert res.signal == signal.SIGKILL  # soft = hard: at the limit the kernel sends SIGKILL
    assert res.wall_seconds < 15


def test_sleep_past_the_timeout(work: Path) -> None:
    script = work / "sleeper.py"
    script.write_text("import time\nprint('going to sleep', flush=True)\ntime.sleep(600)\n")
    res = sandbox.run([sys.executable, str(script)], cwd=work, timeout=3.0)
    assert res.timed_out
    assert "going to sleep" in res.stdout
    assert res.wall_seconds < 10


# ----------------------------------------------------------------- processes


@need("cgroup-pids")
def test_fork_bomb_is_capped_by_the_pids_cgroup(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "forkbomb")], cwd=work, timeout=20,
                      limits=Limits(processes=32))
    assert "refusing" not in res.stdout, res.stdout
    assert "fork failed after" in res.stdout, (res.stdout, res.stderr)
    made = int(res.stdout.split("after ")[1].split()[0])
    assert made < 32
    assert res.returncode == 0 and not res.timed_out


def only_cgroup_kill(version: str) -> cgroups.Available:
    """The probed cgroups reduced to one kill mechanism (v1 freezer or v2)."""
    avail = cgroups.available()
    if version == "v2":
        if avail.v2 is None:
            pytest.skip(f"no usable cgroup v2 here: {avail.why_v2}")
        return cgroups.Available(v1={}, v2=avail.v2, why_v1={}, why_v2="")
    if "freezer" not in avail.v1:
        pytest.skip(f"no usable cgroup v1 freezer here: {avail.why_v1}")
    return cgroups.Available(v1={"freezer": avail.v1["freezer"]}, v2=None, why_v1={},
                             why_v2="")


@pytest.mark.parametrize("layer", ["all", "pid-namespace", "cgroup-kill-v1", "cgroup-kill-v2",
                                   "init-reaper"])
def test_double_fork_setsid_daemon_dies_with_the_run(
    bins: Path, work: Path, layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kill mechanism on its own is enough to take a detached daemon down."""
    if layer == "pid-namespace" and not LAYERS[layer]:
        pytest.skip(f"{layer} not active: {WHY[layer]}")
    if layer.startswith("cgroup-kill"):
        only = only_cgroup_kill(layer.rsplit("-", 1)[1])
        monkeypatch.setattr(cgroups, "available", lambda: only)
    if layer in ("cgroup-kill-v1", "cgroup-kill-v2", "init-reaper"):
        monkeypatch.setattr(probe, "namespaces", lambda: dict(probe.NO_NAMESPACES))
    if layer in ("pid-namespace", "init-reaper"):
        none = cgroups.Available(v1={}, v2=None, why_v1={}, why_v2="")
        monkeypatch.setattr(cgroups, "available", lambda: none)
    marker = f"daemon-{secrets.token_hex(6)}"
    res = sandbox.run([stage(bins, work, "daemon"), marker], cwd=work, timeout=10)
    assert res.returncode == 0 and "daemon started" in res.stdout, (res.stdout, res.stderr)
    assert not res.timed_out
    assert ("cgroup-kill" in res.layers) == layer.startswith(("cgroup-kill", "all"))
    assert survivors(marker) == []


@need("pid-namespace")
def test_candidate_kills_its_parent_and_the_sandbox_reports_cleanly(
    bins: Path, work: Path
) -> None:
    evaluator = work / "killparent_eval.py"
    shutil.copy2(HOSTILE / "killparent_eval.py", evaluator)
    res = sandbox.run([sys.executable, str(evaluator), stage(bins, work, "killparent")],
                      cwd=work, timeout=10)
    assert not res.timed_out and res.error is None
    assert res.signal == signal.SIGKILL and res.returncode == -signal.SIGKILL
    assert res.wall_seconds < 8


def test_stack_overflow_crashes_without_a_core_file(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "stackoverflow")], cwd=work, timeout=10)
    assert res.signal == signal.SIGSEGV
    assert not any(p.name.startswith("core") for p in work.iterdir())


# ----------------------------------------------------------------- memory, disk, output


@need("cgroup-memory")
def test_50_gb_allocation_is_stopped_by_the_memory_cgroup(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "bigalloc")], cwd=work, timeout=30,
                      limits=Limits(memory_bytes=128 << 20))
    assert "refusing" not in res.stdout, res.stdout
    assert res.signal == signal.SIGKILL and res.oom_killed, (res, res.stdout[-300:])
    reached = [int(line.split()[0]) for line in res.stdout.split("\n") if line.endswith(" MB")]
    assert max(reached, default=0) <= 128
    assert "allocated 50 GB" not in res.stdout


def test_multi_gb_file_is_stopped_by_the_file_size_limit(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "bigfile")], cwd=work, timeout=20,
                      limits=Limits(file_bytes=16 << 20))
    assert "refusing" not in res.stdout
    assert res.signal == signal.SIGXFSZ, (res, res.stdout)
    big = work / "big.bin"  # with the private work view it does not even come back
    assert not big.exists() if LAYERS["work-dir"] else big.stat().st_size <= 16 << 20


@need("mount-namespace")
def test_many_files_cannot_fill_the_disk(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "diskfill")], cwd=work, timeout=30,
                      limits=Limits(work_bytes=32 << 20, file_bytes=8 << 20))
    assert "refusing" not in res.stdout, res.stdout
    assert "disk full after" in res.stdout, (res.stdout, res.stderr)
    assert int(res.stdout.split("after ")[1].split()[0]) <= 8
    assert sorted(p.name for p in work.iterdir()) == ["diskfill"]  # nothing flows back


def test_stdout_flood_is_capped(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "flood")], cwd=work, timeout=20,
                      limits=Limits(file_bytes=8 << 20, output_bytes=64 << 10))
    assert res.signal == signal.SIGXFSZ and not res.timed_out
    assert res.output_truncated
    assert len(res.stdout) < 80 << 10 and len(res.stderr) < 80 << 10
    assert res.stdout.startswith("flood line 0 ")
    assert "bytes cut" in res.stdout


# ----------------------------------------------------------------- files, secrets, network


@pytest.fixture
def home_canary() -> Iterator[Path]:
    path = Path.home() / f".ratchet-canary-{secrets.token_hex(6)}"
    path.write_text("canary")
    yield path
    path.unlink(missing_ok=True)
    (path.parent / "moved").unlink(missing_ok=True)


@need("mount-namespace")
def test_files_outside_the_work_dir_are_untouchable(
    tmp_path: Path, work: Path, home_canary: Path
) -> None:
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    exp_canary = experiment / "naive.c"
    exp_canary.write_text("canary")
    var_canary = Path("/var/tmp") / f"ratchet-canary-{secrets.token_hex(6)}"
    var_canary.write_text("canary")
    try:
        shutil.copy2(HOSTILE / "tamper.py", work / "tamper.py")
        own = work / "own.txt"
        own.write_text("mine")
        res = sandbox.run(
            [sys.executable, str(work / "tamper.py"), str(exp_canary), str(home_canary),
             str(var_canary), str(own)], cwd=work, timeout=20)
        assert res.returncode == 0, res.stderr
        for canary in (exp_canary, home_canary, var_canary):
            assert canary.read_text() == "canary"
            assert not (canary.parent / "pwned.txt").exists()
            assert f"write {canary}: DONE" not in res.stdout
        # the experiment (under /tmp) is not even visible; $HOME is hidden; the rest is read-only
        assert f"write {exp_canary}: FileNotFoundError" in res.stdout
        assert f"write {home_canary}: OSError 30" in res.stdout  # EROFS
        assert f"write {var_canary}: OSError 30" in res.stdout
        assert sorted(p.name for p in experiment.iterdir()) == ["naive.c"]
        # ...while the work dir itself is writable (a private view: nothing flows back)
        assert f"create {own}: DONE" in res.stdout and f"write {own}: DONE" in res.stdout
        assert not (work / "pwned.txt").exists() and own.read_text() == "mine"
    finally:
        var_canary.unlink(missing_ok=True)


def test_api_keys_in_the_environment_never_reach_the_child(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = "sk-fake-" + secrets.token_hex(16)
    monkeypatch.setenv("OPENAI_API_KEY", fake)
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake + "a")
    monkeypatch.setenv("GITHUB_TOKEN", fake + "b")
    shutil.copy2(HOSTILE / "steal.py", work / "steal.py")
    # a caller "mistakenly" allowlisting secrets: they are still dropped
    res = sandbox.run(
        [sys.executable, str(work / "steal.py")], cwd=work, timeout=20,
        env={"OPENAI_API_KEY": fake, "MY_SECRET": "x" * 12, "db_password": "hunter2hunter2",
             "SOMETHING": f"prefix-{fake}", "HARMLESS": "1"},
    )
    assert res.returncode == 0, res.stderr
    assert "env HARMLESS=1" in res.stdout
    assert fake not in res.stdout + res.stderr
    assert "hunter2" not in res.stdout and "MY_SECRET" not in res.stdout
    assert set(res.dropped_env) >= {"OPENAI_API_KEY", "MY_SECRET", "db_password", "SOMETHING"}


@need("mount-namespace", "pid-namespace")
def test_keys_file_and_other_processes_environ_are_out_of_reach(
    work: Path, home_canary: Path
) -> None:
    fake = "sk-fake-" + secrets.token_hex(16)
    keys = home_canary.with_name(home_canary.name + "-keys")
    keys.write_text(f"OPENAI_API_KEY={fake}\n")
    keys.chmod(0o600)
    # a process of ours started with the key in its environment (/proc/<pid>/environ)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        env={"OPENAI_API_KEY": fake}, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"up\n"
        environ = Path(f"/proc/{holder.pid}/environ").read_bytes().decode()
        assert fake in environ  # the bait is really there for anyone who can read it
        shutil.copy2(HOSTILE / "steal.py", work / "steal.py")
        res = sandbox.run([sys.executable, str(work / "steal.py"), str(keys)], cwd=work,
                          timeout=20)
        assert res.returncode == 0, res.stderr
        assert f"file {keys}: FileNotFoundError" in res.stdout
        assert "\nproc " in res.stdout  # it could read /proc (its own), just nothing of ours
        assert fake not in res.stdout + res.stderr
    finally:
        holder.kill()
        holder.wait()
        keys.unlink()


@need("net-namespace")
def test_no_network_not_even_the_hosts_loopback(work: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.setblocking(False)
        port = server.getsockname()[1]
        shutil.copy2(HOSTILE / "connect.py", work / "connect.py")
        res = sandbox.run([sys.executable, str(work / "connect.py"), str(port)], cwd=work,
                          timeout=20)
        assert res.returncode == 0, res.stderr
        assert "CONNECTED" not in res.stdout, res.stdout
        assert f"127.0.0.1:{port} " in res.stdout
        with pytest.raises(BlockingIOError):
            server.accept()


# ----------------------------------------------------------------- legitimate work


@needs_gcc
def test_gcc_build_and_asan_run_work_inside_the_sandbox(work: Path) -> None:
    for name in ("asan_ok.c", "asan_bad.c"):
        shutil.copy2(HOSTILE / name, work / name)
    flags = "-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer"
    script = (f"gcc {flags} asan_ok.c -o ok && ./ok && "
              f"gcc {flags} asan_bad.c -o bad && ./bad; echo bad-exit=$?")
    res = sandbox.run(["sh", "-c", script], cwd=work, timeout=120, artefacts=("ok",))
    assert res.returncode == 0, res.stderr
    assert "sum 4950" in res.stdout
    assert "heap-buffer-overflow" in res.stderr
    assert "bad-exit=0" not in res.stdout
    assert (work / "ok").exists() and not (work / "bad").exists()  # declared artefacts only


def test_the_venv_python_and_package_are_reachable(work: Path) -> None:
    src = Path(sandbox.__file__).resolve().parents[2]
    res = sandbox.run(
        [sys.executable, "-c", "import ratchetloop, pydantic, sys; print('ok', sys.prefix)"],
        cwd=work, timeout=30, env={"PYTHONPATH": str(src)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok ")


# ----------------------------------------------------------------- the work dir view


@pytest.fixture(params=["overlay", "copy"])
def view(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each private work view: overlayfs, and the tmpfs-copy fallback."""
    if not LAYERS["work-dir"]:
        pytest.skip(f"work-dir not active: {WHY['work-dir']}")
    real = probe.mount_setup()
    if request.param == "overlay" and real.mode != "overlay":
        pytest.skip(f"overlayfs not allowed here: {real.overlay_why}")
    forced = probe.MountSetup(True, request.param, "", "forced by the test")
    monkeypatch.setattr(probe, "mount_setup", lambda: forced)
    return str(request.param)


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under root: file contents, 'dir', or 'link -> target'."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def test_nothing_but_declared_artefacts_flows_back(work: Path, view: str) -> None:
    shutil.copy2(HOSTILE / "plant.py", work / "plant.py")
    (work / "naive.c").write_text("int naive;\n")
    before = snapshot(work)
    res = sandbox.run([sys.executable, "plant.py"], cwd=work, timeout=20)
    assert res.ok and "planted" in res.stdout, res.stderr
    assert snapshot(work) == before  # by default nothing comes back at all
    # Even when the caller's patterns match them, dot files, symlinks, fifos, odd names,
    # nested files and anything over the size cap stay behind.
    res = sandbox.run([sys.executable, "plant.py"], cwd=work, timeout=20,
                      artefacts=("*.log", ".git*", "*config*", "-*"))
    assert res.ok, res.stderr
    after = snapshot(work)
    assert after == {**before, "run.log": b"the real log\n"}
    assert "'big.log' skipped: over the" in res.stderr
    assert "'-rf.log' skipped" in res.stderr and "'a b.log' skipped" in res.stderr


def test_artefacts_are_plain_files_even_where_a_symlink_waits(work: Path, view: str) -> None:
    """A symlink already in the real dir is never written through."""
    target = work.parent / "victim.txt"
    target.write_text("safe")
    (work / "out.log").symlink_to(target)
    res = sandbox.run(["sh", "-c", "rm -f out.log; echo forged > out.log"], cwd=work,
                      timeout=20, artefacts=("*.log",))
    assert res.ok, res.stderr
    assert target.read_text() == "safe" and (work / "out.log").is_symlink()
    assert "'out.log' not copied back" in res.stderr


def test_readonly_inside_cannot_be_edited_even_during_the_run(work: Path, view: str) -> None:
    shutil.copy2(HOSTILE / "edit_readonly.py", work / "edit_readonly.py")
    (work / "bench.py").write_text("SCORE = 1\n")
    (work / "fake.py").write_text("SCORE = 1e9\n")
    (work / "data").mkdir()
    (work / "data" / "input.txt").write_text("hard")
    (work / "deep" / "er").mkdir(parents=True)
    (work / "deep" / "er" / "input.txt").write_text("deep")
    before = snapshot(work)
    res = sandbox.run([sys.executable, "edit_readonly.py"], cwd=work, timeout=20,
                      readonly_inside=("bench.py", "data", "deep/er/input.txt", "missing.txt"))
    assert res.ok, res.stderr
    attempts = [line for line in res.stdout.splitlines() if line.split(":")[0].count(" ")]
    assert len(attempts) == 14 and not [a for a in attempts if a.endswith("DONE")], res.stdout
    assert "bench.py: SCORE = 1\n" in res.stdout  # what the benchmark reads afterwards
    assert "input: hard\n" in res.stdout and "deep: deep\n" in res.stdout
    assert snapshot(work) == before


def test_the_covered_staging_mount_cannot_be_uncovered(work: Path, view: str) -> None:
    """The view's staging tmpfs (overlay upper, or the tmpfs copy) is covered, not
    detached: neither the run (no capabilities) nor a user+mount namespace of its own
    (all capabilities there, but the copied mounts are locked together) can lift it."""
    code = """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        stage = b"/dev/.ratchet-stage"
        open("mine.txt", "w").write("mine")

        def attempt(where):
            for flags in (0, 2):  # plain, MNT_DETACH
                ok = libc.umount2(stage, flags) == 0
                print(where, "UNCOVERED" if ok else os.strerror(ctypes.get_errno()))
            try:
                print(where, "lists", os.listdir(stage))
            except OSError as exc:
                print(where, "lists", type(exc).__name__)

        attempt("run")
        if libc.unshare(0x10000000 | 0x00020000) == 0:  # CLONE_NEWUSER | CLONE_NEWNS
            attempt("userns")
        else:
            print("userns", os.strerror(ctypes.get_errno()))
        print(open("mine.txt").read())
    """
    res = sandbox.run([sys.executable, "-c", textwrap.dedent(code)], cwd=work, timeout=20)
    assert res.ok and res.stdout.rstrip().endswith("mine"), res.stdout + res.stderr
    assert "UNCOVERED" not in res.stdout, res.stdout
    for line in res.stdout.splitlines():
        if " lists [" in line:
            assert line.endswith("lists []"), res.stdout  # never upper/, work/, mine.txt
    assert sorted(p.name for p in work.iterdir()) == []
    print(res.stdout)


@need("mount-namespace")
@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "link/input.txt"])
def test_readonly_inside_that_cannot_be_honoured_fails_closed(work: Path, bad: str) -> None:
    (work / "real").mkdir()
    (work / "link").symlink_to(work / "real")
    (work / "real" / "input.txt").write_text("x")
    res = sandbox.run(["sh", "-c", "echo should-not-run"], cwd=work, timeout=20,
                      readonly_inside=(bad,))
    assert res.error and "readonly_inside" in res.error and not res.ok
    assert "should-not-run" not in res.stdout


# ----------------------------------------------------------------- the result channel


@pytest.mark.parametrize("isolate", [True, False])
def test_fd3_only_when_asked_and_only_for_the_command(work: Path, isolate: bool) -> None:
    shutil.copy2(HOSTILE / "fd3.py", work / "fd3.py")
    argv = [sys.executable, str(work / "fd3.py")]
    res = sandbox.run([*argv, "guard"], cwd=work, timeout=20, isolate=isolate)
    assert res.result is None and "fd3 OSError 9 None" in res.stdout, res.stdout + res.stderr
    # eval.py's way: fd 3 non-inheritable, itself non-dumpable: the candidate cannot forge
    res = sandbox.run([*argv, "guard"], cwd=work, timeout=20, isolate=isolate,
                      result_channel=True)
    assert res.result == b'{"verdict": "trusted"}\n', (res.stdout, res.stderr)
    assert "inherited OSError 9" in res.stdout  # EBADF
    assert "proc PermissionError" in res.stdout  # /proc/<eval.py>/fd/3
    assert "fd3 ok 3" in res.stdout and not res.result_truncated
    # ...and why it must: a careless parent hands the channel to its child
    res = sandbox.run([*argv, "careless"], cwd=work, timeout=20, isolate=isolate,
                      result_channel=True)
    assert "inherited DONE" in res.stdout and "proc DONE" in res.stdout
    assert b"FORGED-proc" in (res.result or b"")  # reopened at offset 0: it overwrote


@need("mount-namespace")
def test_the_inits_handles_are_out_of_reach(work: Path) -> None:
    """The init holds the result fd and a writable handle on the real work dir: the
    command (same uid, no capabilities) cannot open them through /proc/<init>/fd."""
    code = """
        import os
        for pid in sorted({1, os.getppid()}):
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError as exc:
                print(pid, "list", type(exc).__name__)
                names = [str(n) for n in range(16)]
            for n in names:
                try:
                    os.close(os.open(f"/proc/{pid}/fd/{n}", os.O_RDONLY))
                    print(pid, n, "OPENED")
                except OSError as exc:
                    print(pid, n, type(exc).__name__)
    """
    res = sandbox.run([sys.executable, "-c", textwrap.dedent(code)], cwd=work, timeout=20,
                      result_channel=True, artefacts=("*.log",))
    assert res.ok, res.stderr
    tried = [line.split() for line in res.stdout.splitlines()]
    assert [t for t in tried if t[0] == "1" and t[1].isdigit() and int(t[1]) > 2], res.stdout
    assert "OPENED" not in res.stdout, res.stdout


def test_result_is_capped(work: Path) -> None:
    res = sandbox.run([sys.executable, "-c", "import os; os.write(3, b'x' * (16 << 20));"
                       "os.write(3, b'tail')"], cwd=work, timeout=30, result_channel=True)
    assert res.ok and res.result_truncated and res.result == b"x" * (16 << 20)


# ----------------------------------------------------------------- $HOME and keys


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$HOME under /tmp (tmp_path), with a keys file and an ssh key in it."""
    home = tmp_path / "home"
    (home / ".config" / "ratchetloop").mkdir(parents=True)
    (home / ".ssh").mkdir()
    (home / ".config" / "ratchetloop" / "keys.json").write_text(
        json.dumps({"OPENAI_API_KEY": SECRET}))
    (home / ".ssh" / "id_ed25519").write_text(SECRET)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RATCHET_KEYS_FILE", raising=False)
    return home


SECRET = "sk-fake-" + secrets.token_hex(16)


@need("mount-namespace")
def test_home_and_keys_are_hidden_with_the_work_dir_under_home(
    fake_home: Path, view: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = fake_home / "code" / "x"
    work.mkdir(parents=True)
    shutil.copy2(HOSTILE / "steal.py", work / "steal.py")
    keys = fake_home / ".config" / "ratchetloop" / "keys.json"
    ssh = fake_home / ".ssh" / "id_ed25519"
    argv = [sys.executable, str(work / "steal.py"), str(fake_home), str(fake_home / "code"),
            str(keys), str(ssh), str(work / "steal.py")]
    res = sandbox.run(argv, cwd=work, timeout=20)
    assert res.ok and "home-hidden" in res.layers, res.stderr
    assert f"dir {fake_home}: ['code']" in res.stdout  # only the way to the work dir
    assert f"dir {fake_home / 'code'}: ['x']" in res.stdout
    assert f"file {keys}: FileNotFoundError" in res.stdout
    assert f"file {ssh}: FileNotFoundError" in res.stdout
    assert "file " + str(work / "steal.py") + ': """Looks' in res.stdout  # its own work dir
    assert SECRET not in res.stdout + res.stderr
    # Bound back on purpose (ro_paths): the keys file in it is covered by an empty file.
    res = sandbox.run(argv, cwd=work, timeout=20, ro_paths=[fake_home / ".config"])
    assert res.ok, res.stderr
    assert f"file {keys}: \n" in res.stdout and SECRET not in res.stdout + res.stderr


@need("mount-namespace")
@pytest.mark.parametrize("where", ["outside-home", "in-work-dir"])
def test_keys_file_named_by_ratchet_keys_file_is_hidden_wherever_it_is(
    fake_home: Path, work: Path, view: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "outside-home":  # /var/tmp stays visible (read-only) in the sandbox
        keys = Path("/var/tmp") / f"ratchet-keys-{secrets.token_hex(6)}.json"
    else:
        keys = work / "keys.json"
    keys.write_text(json.dumps({"OPENAI_API_KEY": SECRET}))
    monkeypatch.setenv("RATCHET_KEYS_FILE", str(keys))
    try:
        shutil.copy2(HOSTILE / "steal.py", work / "steal.py")
        res = sandbox.run([sys.executable, str(work / "steal.py"), str(keys)], cwd=work,
                          timeout=20)
        assert res.ok, res.stderr
        assert SECRET not in res.stdout + res.stderr
        assert (f"file {keys}: \n" in res.stdout or
                f"file {keys}: FileNotFoundError" in res.stdout)
    finally:
        keys.unlink(missing_ok=True)


def test_home_under_tmp_keeps_the_mount_namespace_on(fake_home: Path) -> None:
    """/tmp is covered first; hiding a $HOME inside it must not break the mount setup."""
    assert str(fake_home).startswith("/tmp/")
    code = ("import json; from ratchetloop.sandbox import probe; s = probe.mount_setup();"
            "print(json.dumps([probe.namespaces()['mount'], s.ok, s.why]))")
    src = str(Path(sandbox.__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HOME": str(fake_home), "PYTHONPATH": src})
    mount_ns, ok, why = json.loads(proc.stdout)
    if not mount_ns:
        pytest.skip("no mount namespace here at all")
    assert ok, why


# ----------------------------------------------------------------- CPU time from outside


@pytest.mark.parametrize("layers", ["all", "no-cgroups", "no-namespaces-no-cgroups"])
def test_cpu_seconds_count_an_orphaned_grandchild(
    work: Path, layers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if layers != "all":
        none = cgroups.Available(v1={}, v2=None, why_v1={}, why_v2="")
        monkeypatch.setattr(cgroups, "available", lambda: none)
    if layers == "no-namespaces-no-cgroups":
        monkeypatch.setattr(probe, "namespaces", lambda: dict(probe.NO_NAMESPACES))
    shutil.copy2(HOSTILE / "burn_orphan.py", work / "burn_orphan.py")
    res = sandbox.run([sys.executable, str(work / "burn_orphan.py"), "0.6"], cwd=work,
                      timeout=30)
    assert res.ok and "orphan done True" in res.stdout, res.stderr
    assert res.cpu_seconds is not None and 0.6 <= res.cpu_seconds < res.wall_seconds + 1


@need("cgroup-cpu")
def test_cpu_seconds_after_a_timeout_come_from_the_cgroup(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "spin")], cwd=work, timeout=1.5)
    assert res.timed_out
    # The spinner's burn, not just the init's few ms: at least a fifth of the wall clock,
    # even when a loaded shared machine gives it much less than a core.
    assert res.cpu_seconds is not None and 0.3 <= res.cpu_seconds < res.wall_seconds + 1
