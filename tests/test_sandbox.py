"""sandbox.run's contract: statuses, output, environment, fallbacks, layer reporting."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ratchetloop import sandbox
from ratchetloop.sandbox import Limits, cgroups, probe, runner

LAYERS = {name: active for name, active, _ in sandbox.describe_layers()}
NO_NS = dict(probe.NO_NAMESPACES)
NO_CGROUPS = cgroups.Available(v1={}, v2=None, why_v1={}, why_v2="disabled by the test")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_describe_layers_is_honest_and_matches_what_run_uses(tmp_path: Path) -> None:
    layers = sandbox.describe_layers()
    names = [name for name, _, _ in layers]
    for required in ("pid-namespace", "net-namespace", "mount-namespace", "cgroup-memory",
                     "cgroup-pids", "cgroup-kill", "cgroup-cpu", "rlimits", "env-allowlist",
                     "seccomp", "disk-quota", "home-hidden", "keys-hidden", "work-dir",
                     "user-namespace", "non-root"):
        assert required in names
    for name, active, why in layers:
        assert isinstance(name, str) and isinstance(active, bool) and why.strip()
    why = {n: w for n, _, w in layers}
    assert "not by the sandbox" in why["seccomp"]  # the harness applies the filter: say so
    assert LAYERS["disk-quota"] == LAYERS["mount-namespace"] == LAYERS["home-hidden"]
    assert ("overlayfs" in why["work-dir"]) != ("tmpfs copy" in why["work-dir"])
    for name in ("cgroup-memory", "cgroup-pids", "cgroup-kill", "cgroup-cpu"):
        assert why[name].startswith(("v1:", "v2:")) or not LAYERS[name], why[name]
    res = sandbox.run(["true"], cwd=tmp_path, timeout=20)
    assert res.ok, res.stderr
    used = set(res.layers)
    for name in ("pid-namespace", "net-namespace", "mount-namespace", "home-hidden",
                 "keys-hidden", "work-dir", "cgroup-memory", "cgroup-pids", "cgroup-kill",
                 "cgroup-cpu"):
        assert (name in used) == LAYERS[name], name


def test_missing_layers_names_what_is_off_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, why in sandbox.missing_layers():
        assert LAYERS[name] is False and why.strip()
    monkeypatch.setattr(probe, "namespaces", lambda: NO_NS)
    monkeypatch.setattr(cgroups, "available", lambda: NO_CGROUPS)
    missing = dict(sandbox.missing_layers())
    for name in ("pid-namespace", "net-namespace", "mount-namespace", "home-hidden",
                 "keys-hidden", "work-dir", "cgroup-memory", "cgroup-kill"):
        assert name in missing, name
    assert "NO memory limit" in missing["cgroup-memory"]


def test_exit_code_and_signal_are_reported(tmp_path: Path) -> None:
    assert sandbox.run(py("raise SystemExit(7)"), cwd=tmp_path, timeout=20).returncode == 7
    res = sandbox.run(py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"),
                      cwd=tmp_path, timeout=20)
    assert res.signal == signal.SIGTERM and res.returncode == -signal.SIGTERM
    assert not res.timed_out and not res.ok


def test_missing_command_is_a_clean_failure(tmp_path: Path) -> None:
    res = sandbox.run(["/nonexistent/ratchet-cmd"], cwd=tmp_path, timeout=20)
    assert res.returncode == 127 and "cannot run" in res.stderr


def test_missing_cwd_is_a_sandbox_error_not_an_exception(tmp_path: Path) -> None:
    res = sandbox.run(["true"], cwd=tmp_path / "nope", timeout=20)
    assert res.error and not res.ok


@pytest.mark.skipif(not LAYERS["mount-namespace"], reason="mount namespace not active")
def test_failed_filesystem_setup_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "keep_paths", lambda *a: ["/nonexistent/ratchet-keep"])
    res = sandbox.run(["sh", "-c", "echo should-not-run"], cwd=tmp_path, timeout=20)
    assert res.error and "setup failed" in res.error
    assert "should-not-run" not in res.stdout and not res.ok


def test_timeout_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    res = sandbox.run(py("""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen(["sleep", "300"])
        print("up", flush=True)
        time.sleep(300)
    """), cwd=tmp_path, timeout=3.0)
    assert res.timed_out and res.stdout == "up\n"
    assert res.wall_seconds < 10


def test_result_line_survives_output_truncation(tmp_path: Path) -> None:
    res = sandbox.run(py("""
        import sys
        for i in range(20000):
            print("noise", i)
        print('{"ok": true}')
    """), cwd=tmp_path, timeout=20, limits=Limits(output_bytes=16 << 10))
    assert res.output_truncated
    assert res.stdout.startswith("noise 0\n")
    assert res.stdout.rstrip().endswith('{"ok": true}')
    assert len(res.stdout) < 17 << 10


def test_the_environment_refuses_secrets_even_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789abcdef")
    monkeypatch.setenv("TMPDIR", "/tmp")
    res = sandbox.run(py("import json, os; print(json.dumps(dict(os.environ)))"),
                      cwd=tmp_path, timeout=20,
                      env={"AWS_SECRET_ACCESS_KEY": "x", "hf_token": "y", "PGPASSWORD": "z",
                           "COPY": "sk-live-0123456789abcdef", "OK": "1",
                           "RATCHET_RESULT_FD": "3"})
    env = json.loads(res.stdout)
    assert env["OK"] == "1" and env["TMPDIR"] == "/tmp" and "PATH" in env
    assert not {"OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "hf_token", "PGPASSWORD",
                "COPY", "RATCHET_RESULT_FD"} & set(env)
    assert set(res.dropped_env) == {"AWS_SECRET_ACCESS_KEY", "hf_token", "PGPASSWORD", "COPY"}
    assert env["HOME"] != str(Path.home())


def test_fallback_without_namespaces_or_cgroups_still_contains_the_basics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a fresh CI box without unshare/cgroups gets: session, rlimits, env, reaper."""
    monkeypatch.setattr(probe, "namespaces", lambda: NO_NS)
    monkeypatch.setattr(cgroups, "available", lambda: NO_CGROUPS)
    res = sandbox.run(py("""
        import subprocess, time
        subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"], start_new_session=True)
        print("up", flush=True)
        time.sleep(300)
    """), cwd=tmp_path, timeout=3.0, limits=Limits(file_bytes=1 << 20))
    assert res.timed_out and res.stdout == "up\n"
    assert set(res.layers) == {"session", "rlimits", "env-allowlist", "output-cap",
                               "init-reaper"}
    assert not _processes_under(res, tmp_path)


def _processes_under(res: sandbox.SandboxResult, where: Path) -> list[int]:
    """Processes whose cwd is `where` (the fallback has no cgroup to ask)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if os.readlink(d / "cwd") == str(where):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not (LAYERS["pid-namespace"] or LAYERS["cgroup-kill"]),
                    reason="neither pid namespace nor cgroup kill active")
def test_tree_dies_on_time_even_if_the_loop_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL the process that called run(): the init's own deadline still ends the tree."""
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    marker = f"orphaned-{os.getpid()}-{id(tmp_path)}"
    runner = subprocess.Popen(py(f"""
        from pathlib import Path
        from ratchetloop import sandbox
        sandbox.run(["sh", "-c", "echo up > ready; sleep 300; echo {marker}"],
                    cwd=Path({str(tmp_path)!r}), timeout=0.5,
                    limits=sandbox.Limits(work_bytes=None))  # the real dir: our fifo
    """))
    try:
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:  # wait (bounded) until the sandboxed command has written to the fifo
            assert select.select([rfd], [], [], 30)[0], "sandboxed command never started"
            assert os.read(rfd, 16) == b"up\n"
        finally:
            os.close(rfd)
        victims = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
                   and marker in (d / "cmdline").read_bytes().decode(errors="replace")]
        assert victims
        fds = [os.pidfd_open(pid) for pid in victims]
        runner.kill()
        runner.wait()
        for fd in fds:  # deadline = timeout + 5 s
            assert select.select([fd], [], [], 20)[0], "sandboxed process outlived its deadline"
            os.close(fd)
    finally:
        runner.kill()
        runner.wait()
