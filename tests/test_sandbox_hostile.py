"""Hostile candidates, run for real through sandbox.run, each one contained.

Every test runs a small C or Python program from tests/hostile/ in a fresh work dir, checks
how it was stopped, and checks that nothing it started is still alive afterwards. Tests whose
hostile part needs a containment layer skip (with the reason) when the layer is not active;
the C programs also refuse to misbehave when they cannot see their limit, so a broken layer
can never take the shared machine down.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratchetloop import sandbox
from ratchetloop.sandbox import Limits

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
    found = []
    for parent in sandbox._cgroups().values():
        found += [p for p in parent.iterdir() if p.name.startswith(prefix)]
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path: Path) -> Iterator[None]:
    yield
    assert survivors(str(tmp_path)) == []
    assert leftover_cgroups() == []


# ----------------------------------------------------------------- time


def test_infinite_loop_is_killed_at_the_timeout(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "spin")], cwd=work, timeout=1.0)
    assert res.timed_out and res.returncode is None and not res.ok
    assert res.wall_seconds < 5


def test_cpu_limit_stops_a_spinner_before_the_wall_clock(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "spin")], cwd=work, timeout=30,
                      limits=Limits(cpu_seconds=1))
    assert not res.timed_out
    assert res.signal in (signal.SIGXCPU, signal.SIGKILL)
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


@pytest.mark.parametrize("layer", ["all", "pid-namespace", "cgroup-freezer", "init-reaper"])
def test_double_fork_setsid_daemon_dies_with_the_run(
    bins: Path, work: Path, layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kill mechanism on its own is enough to take a detached daemon down."""
    if layer != "all" and layer != "init-reaper" and not LAYERS[layer]:
        pytest.skip(f"{layer} not active: {WHY[layer]}")
    if layer in ("cgroup-freezer", "init-reaper"):
        no_ns = dict.fromkeys(("user", "pid", "net", "ipc", "uts", "mount"), False)
        monkeypatch.setattr(sandbox, "_namespaces", lambda: no_ns)
    if layer in ("pid-namespace", "init-reaper"):
        monkeypatch.setattr(sandbox, "_cgroups", lambda: {})
    marker = f"daemon-{secrets.token_hex(6)}"
    res = sandbox.run([stage(bins, work, "daemon"), marker], cwd=work, timeout=10)
    assert res.returncode == 0 and "daemon started" in res.stdout, (res.stdout, res.stderr)
    assert not res.timed_out
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
    assert (work / "big.bin").stat().st_size <= 16 << 20


@need("mount-namespace")
def test_many_files_cannot_fill_the_disk(bins: Path, work: Path) -> None:
    res = sandbox.run([stage(bins, work, "diskfill")], cwd=work, timeout=30,
                      limits=Limits(work_bytes=32 << 20, file_bytes=8 << 20))
    assert "refusing" not in res.stdout, res.stdout
    assert "disk full after" in res.stdout, (res.stdout, res.stderr)
    assert int(res.stdout.split("after ")[1].split()[0]) <= 8
    used = sum(p.stat().st_size for p in work.iterdir())  # what was copied back
    assert used <= 40 << 20


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
        # ...while the work dir itself is writable
        assert f"create {own}: DONE" in res.stdout and (work / "pwned.txt").exists()
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
    res = sandbox.run(["sh", "-c", script], cwd=work, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "sum 4950" in res.stdout
    assert "heap-buffer-overflow" in res.stderr
    assert "bad-exit=0" not in res.stdout
    assert (work / "ok").exists()


def test_the_venv_python_and_package_are_reachable(work: Path) -> None:
    src = Path(sandbox.__file__).resolve().parents[1]
    res = sandbox.run(
        [sys.executable, "-c", "import ratchetloop, pydantic, sys; print('ok', sys.prefix)"],
        cwd=work, timeout=30, env={"PYTHONPATH": str(src)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok ")
