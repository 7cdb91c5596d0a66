"""The sandbox as an ordinary user: user namespaces, $HOME and keys hidden, a fork bomb
contained, a delegated cgroup v2 subtree, `ratchet doctor`.

As root, the test creates a throwaway user (useradd; userdel -r at the end), a
world-readable scratch dir outside pytest's 0700 temp dirs, and a cgroup v2 subtree owned by
that user (delegated the way systemd delegates user@.service), and runs
tests/hostile/nonroot_helper.py as that user with the venv's python. Run as an ordinary
user already, it runs the helper directly (without the delegated cgroup). Only processes of
the throwaway user (all started here) are ever killed.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ratchetloop import sandbox
from ratchetloop.sandbox import cgroups

HOSTILE = Path(__file__).parent / "hostile"
SRC = Path(sandbox.__file__).resolve().parents[2]
RATCHET = Path(sys.executable).with_name("ratchet")
ROOT = os.geteuid() == 0
GCC = shutil.which("gcc")

pytestmark = pytest.mark.skipif(GCC is None, reason="gcc not found (fixtures are C)")


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path


def _pids_of(uid: int) -> list[int]:
    """Processes whose real uid is `uid` (for the throwaway user: all started by us)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        uids = [line.split()[1] for line in status.splitlines() if line.startswith("Uid:")]
        if uids and int(uids[0]) == uid:
            found.append(int(d.name))
    return found


@pytest.fixture
def user() -> Iterator[User]:
    """A fresh ordinary user, or ourselves when we are not root."""
    if not ROOT:
        me = pwd.getpwuid(os.getuid())
        yield User(me.pw_name, me.pw_uid, me.pw_gid, Path(os.environ.get("HOME", me.pw_dir)))
        return
    if not (shutil.which("useradd") and shutil.which("userdel") and shutil.which("setpriv")):
        pytest.skip("useradd/userdel/setpriv not available")
    name = f"rlsbx{secrets.token_hex(4)}"
    made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    entry = pwd.getpwnam(name)
    try:
        yield User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    finally:
        for pid in _pids_of(entry.pw_uid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["userdel", "--remove", name], capture_output=True)


@pytest.fixture
def scratch(user: User) -> Iterator[Path]:
    """World-readable (pytest's tmp dirs are 0700), with a sub-dir the user owns."""
    base = Path(tempfile.mkdtemp(prefix="ratchet-nonroot-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        bins = base / "bin"
        bins.mkdir()
        for name in ("forkbomb", "daemon"):
            subprocess.run([GCC, "-O0", "-o", str(bins / name), str(HOSTILE / f"{name}.c")],
                           check=True)
        mine = base / "user"
        mine.mkdir()
        os.chown(mine, user.uid, user.gid)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def delegated(user: User) -> Iterator[Path | None]:
    """A cgroup v2 subtree owned by the user (dir, cgroup.procs, subtree_control, threads)."""
    mount = cgroups.v2_mount()
    if not ROOT or mount is None:
        yield None
        return
    group = mount / f"rl-nonroot-{secrets.token_hex(4)}"
    try:
        group.mkdir()
    except OSError:
        yield None
        return
    try:
        for path in (group, group / "cgroup.procs", group / "cgroup.subtree_control",
                     group / "cgroup.threads"):
            os.chown(path, user.uid, user.gid)
        yield group
    finally:
        if (group / "cgroup.kill").exists() and (group / "cgroup.procs").read_text().strip():
            (group / "cgroup.kill").write_text("1")  # only our throwaway user's processes
        for sub, _, _ in sorted(os.walk(group), key=lambda t: -len(t[0])):
            try:
                os.rmdir(sub)
            except OSError:
                pass


def _reach_python() -> str:
    """Shell lines (run as root in a private mount namespace) that make the venv's python
    reachable for the user when it lives in a dir only root may enter (e.g. ~root/.pyenv):
    the blocking dir is covered by a tmpfs and the python tree moved back into it."""
    exe = Path(os.path.realpath(sys.executable))
    blocked = next((p for p in reversed(exe.parents) if not os.stat(p).st_mode & 0o001), None)
    if blocked is None:
        return ""
    inner = exe.relative_to(blocked).parts[0]
    if not os.stat(blocked / inner).st_mode & 0o001:
        pytest.skip(f"{blocked / inner} is not reachable for other users")
    return (f"mkdir -p /run/rl-stage && mount --bind {blocked / inner} /run/rl-stage && "
            f"mount -t tmpfs -o mode=755,size=1m tmpfs {blocked} && mkdir {blocked / inner} "
            f"&& mount --move /run/rl-stage {blocked / inner} && ")


def as_user(user: User, argv: list[str], cgroup: Path | None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(user.home), "USER": user.name, "LOGNAME": user.name,
           "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(SRC), "COLUMNS": "250",
           **(extra_env or {})}
    if not ROOT:
        return subprocess.run(argv, capture_output=True, text=True, timeout=300,
                              env={**os.environ, **env})
    script = (_reach_python() + f"exec setpriv --reuid={user.uid} --regid={user.gid} "
              "--init-groups -- \"$@\"")
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
           "sh", *argv]

    def join() -> None:  # the user's process starts inside the delegated subtree
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=join, cwd="/")


def test_the_sandbox_as_an_ordinary_user(user: User, scratch: Path,
                                         delegated: Path | None) -> None:
    proc = as_user(user, [sys.executable, str(HOSTILE / "nonroot_helper.py"),
                          str(scratch / "bin"), str(scratch / "user")], delegated)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    layers = {name: (active, why) for name, active, why in got["describe"]}
    secret = got["secret"]
    assert got["uid"] == user.uid != 0
    # the user-namespace path
    for name in ("user-namespace", "pid-namespace", "net-namespace", "mount-namespace",
                 "home-hidden", "keys-hidden", "work-dir", "non-root"):
        assert layers[name][0], (name, layers[name])
    # $HOME, its keys file and ssh key hidden with the work dir under $HOME
    steal = got["steal"]
    assert steal["rc"] == 0 and "user-namespace" in steal["layers"], steal
    assert f"dir {got['home']}: ['code']" in steal["stdout"]
    assert f"file {got['keys']}: FileNotFoundError" in steal["stdout"]
    assert f"file {got['ssh']}: FileNotFoundError" in steal["stdout"]
    # a keys file outside $HOME named by RATCHET_KEYS_FILE: covered by an empty file
    named = got["steal_keys_file"]
    assert named["rc"] == 0 and f"file {got['outside']}: \n" in named["stdout"], named
    for run in (steal, named):
        assert secret not in run["stdout"] + run["stderr"]
    # a fork bomb is contained (RLIMIT_NPROC: no pids controller is delegated here)
    bomb = got["forkbomb"]
    assert "refusing" not in bomb["stdout"] and "fork failed after" in bomb["stdout"], bomb
    assert int(bomb["stdout"].split("after ")[1].split()[0]) < 32 + 64
    assert not bomb["timed_out"] and got["forkbomb_survivors"] == []
    # the double-forked daemon dies with the run
    assert "daemon started" in got["daemon"]["stdout"] and got["daemon_survivors"] == []
    # the private view: fd 3, artefacts, readonly_inside
    view = got["view"]
    assert view["rc"] == 0 and view["result"] == "verdict\n", view
    assert view["files"] == ["bench.txt", "run.log"] and view["bench"] == "hard"
    assert "hard" in view["stdout"]
    if delegated is not None:  # the v2 kill layer in a subtree the user owns
        assert got["v2_parent"] == str(delegated)
        assert layers["cgroup-kill"][0] and layers["cgroup-kill"][1].startswith("v2:")
        assert str(delegated) in layers["cgroup-kill"][1]
        assert "cgroup-kill" in got["daemon"]["layers"]
        assert [p.name for p in delegated.iterdir() if p.is_dir()] == []  # groups removed
        assert (delegated / "cgroup.procs").read_text().strip() == ""
    if ROOT:  # nothing of the user's is left running
        assert _pids_of(user.uid) == []
    # `ratchet doctor` as that user lists every layer
    doctor = as_user(user, [str(RATCHET), "doctor"], delegated)
    assert doctor.returncode == 0, doctor.stderr[-3000:]
    for name in layers:
        assert f"sandbox {name} " in doctor.stdout, name
    print(doctor.stdout)


WARM_HELPER = '''
import json, os, secrets, shutil, sys
from pathlib import Path
from ratchetloop import sandbox

bins, scratch = Path(sys.argv[1]), Path(sys.argv[2])
home = Path(os.environ["HOME"])
secret = "sk-fake-" + secrets.token_hex(16)
keys = home / ".config" / "ratchetloop" / "keys.json"
keys.parent.mkdir(parents=True, exist_ok=True)
keys.write_text(json.dumps({"OPENAI_API_KEY": secret}))
work = home / "code" / "w"
work.mkdir(parents=True, exist_ok=True)
(work / "input.txt").write_text("original\\n")
shutil.copy2(bins / "daemon", work / "daemon")
marker = "warm-daemon-" + secrets.token_hex(6)
KEYRING = (
    "import ctypes, sys\\n"
    "libc = ctypes.CDLL(None, use_errno=True)\\n"
    "ring = ctypes.c_int(-4)\\n"
    "if sys.argv[1] == 'add':\\n"
    "    print('added' if libc.syscall(248, b'user', b'rl-warm', b'x', 1, ring) > 0 else 'no')\\n"
    "else:\\n"
    "    hit = libc.syscall(250, 10, ring, b'user', b'rl-warm', 0) > 0\\n"
    "    print('FOUND' if hit else 'absent')\\n")


def survivors(text):
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(d.name)
            except OSError:
                pass
    return found


box = sandbox.Warm()
runs = {}
def run(name, argv, **kw):
    res = box.run(argv, cwd=work, timeout=30, **kw)
    runs[name] = {"warm": res.warm, "rc": res.returncode, "stdout": res.stdout[-2000:],
                  "stderr": res.stderr[-2000:], "error": res.error, "layers": res.layers}

run("steal", ["/bin/sh", "-c", f"cat {keys} || echo hidden; ls -a {home}"])
run("daemon", [str(work / "daemon"), marker])
daemon_survivors = survivors(marker)
run("plant", ["/bin/sh", "-c", "echo changed > input.txt; echo x > new.txt; echo x > /tmp/left;"
              " ipcmk -M 4096 >/dev/null; echo planted"])
run("look", ["/bin/sh", "-c", "cat input.txt; ls -a; ls /tmp; ipcs -m | grep -c 0x"])
run("key-add", [sys.executable, "-c", KEYRING, "add"])
run("key-look", [sys.executable, "-c", KEYRING, "search"])
print(json.dumps({"runs": runs, "daemon_survivors": daemon_survivors, "secret": secret,
                  "cold_why": box.cold_why, "broken": box.broken,
                  "work": sorted(p.name for p in work.iterdir()),
                  "input": (work / "input.txt").read_text()}))
box.close()
'''


def test_the_warm_sandbox_as_an_ordinary_user(user: User, scratch: Path,
                                              delegated: Path | None) -> None:
    """Warm().run as a user: each command in its own user namespace (a keyring key of one
    command is gone for the next), $HOME and keys hidden, nothing carried over."""
    helper = scratch / "warm_helper.py"
    helper.write_text(WARM_HELPER)
    helper.chmod(0o644)
    proc = as_user(user, [sys.executable, str(helper), str(scratch / "bin"),
                          str(scratch / "user")], delegated)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["cold_why"] is None and got["broken"] is None, got
    runs = got["runs"]
    assert all(r["warm"] and r["error"] is None for r in runs.values()), runs
    assert "user-namespace" in runs["steal"]["layers"]
    assert "hidden" in runs["steal"]["stdout"] and got["secret"] not in json.dumps(runs)
    assert "daemon started" in runs["daemon"]["stdout"] and got["daemon_survivors"] == []
    assert "planted" in runs["plant"]["stdout"]
    look = runs["look"]["stdout"].split()
    assert look[0] == "original" and "new.txt" not in look and "left" not in look
    assert look[-1] == "0"  # no SysV segment carried over
    assert runs["key-add"]["stdout"].strip() == "added", runs["key-add"]
    assert runs["key-look"]["stdout"].strip() == "absent", runs["key-look"]
    assert got["work"] == ["daemon", "input.txt"] and got["input"] == "original\n"
    if delegated is not None:
        assert [p.name for p in delegated.iterdir() if p.is_dir()] == []  # groups removed
    if ROOT:
        assert _pids_of(user.uid) == []
