"""Runs as an ordinary user (tests/test_sandbox_nonroot.py starts it): hostile programs
through sandbox.run, one JSON object on stdout with what happened.

argv: BIN_DIR (compiled fixtures) SCRATCH (a dir this user may write, outside $HOME).
"""
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from ratchetloop import sandbox
from ratchetloop.sandbox import Limits, cgroups

HOSTILE = Path(__file__).parent
bins, scratch = Path(sys.argv[1]), Path(sys.argv[2])
home = Path(os.environ["HOME"])
secret = "sk-fake-" + secrets.token_hex(16)
out: dict[str, Any] = {"uid": os.getuid(), "home": str(home), "secret": secret}


def survivors(marker: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(d.name)
            except OSError:
                pass
    return found


def summary(res: sandbox.SandboxResult) -> dict[str, Any]:
    return {"rc": res.returncode, "stdout": res.stdout[-4000:], "stderr": res.stderr[-2000:],
            "layers": res.layers, "error": res.error, "timed_out": res.timed_out}


# The keys file in its default place, an ssh key, and a keys file outside $HOME.
keys = home / ".config" / "ratchetloop" / "keys.json"
keys.parent.mkdir(parents=True, exist_ok=True)
keys.write_text(json.dumps({"OPENAI_API_KEY": secret}))
keys.chmod(0o600)
(home / ".ssh").mkdir(exist_ok=True)
(home / ".ssh" / "id_ed25519").write_text(secret)
outside = scratch / "keys.json"
outside.write_text(json.dumps({"OPENAI_API_KEY": secret}))
out.update(keys=str(keys), ssh=str(home / ".ssh" / "id_ed25519"), outside=str(outside))

out["describe"] = sandbox.describe_layers()
out["missing"] = sandbox.missing_layers()
v2 = cgroups.available().v2
out["v2_parent"] = str(v2.parent) if v2 else None

# 1. Steal keys with the work dir under $HOME; 2. the keys file named by RATCHET_KEYS_FILE.
work = home / "code" / "x"
work.mkdir(parents=True, exist_ok=True)
shutil.copy2(HOSTILE / "steal.py", work / "steal.py")
argv = [sys.executable, str(work / "steal.py"), str(home), str(keys),
        str(home / ".ssh" / "id_ed25519")]
out["steal"] = summary(sandbox.run(argv, cwd=work, timeout=30))
os.environ["RATCHET_KEYS_FILE"] = str(outside)  # /var/tmp: visible unless covered
out["steal_keys_file"] = summary(sandbox.run([*argv, str(outside)], cwd=work, timeout=30))
del os.environ["RATCHET_KEYS_FILE"]

# 3. A fork bomb (RLIMIT_NPROC, or a pids cgroup if one was delegated).
bomb = scratch / "bomb"
bomb.mkdir()
shutil.copy2(bins / "forkbomb", bomb / "forkbomb")
res = sandbox.run([str(bomb / "forkbomb")], cwd=bomb, timeout=30, limits=Limits(processes=32))
out["forkbomb"] = summary(res)
out["forkbomb_survivors"] = survivors(str(bomb / "forkbomb"))

# 4. A double-fork setsid daemon.
marker = f"daemon-{secrets.token_hex(6)}"
daemon = scratch / "daemon"
daemon.mkdir()
shutil.copy2(bins / "daemon", daemon / "daemon")
out["daemon"] = summary(sandbox.run([str(daemon / "daemon"), marker], cwd=daemon, timeout=30))
out["daemon_survivors"] = survivors(marker)

# 5. The result channel, artefacts and readonly_inside work in the user namespace too.
view = scratch / "view"
view.mkdir()
(view / "bench.txt").write_text("hard")
res = sandbox.run(["sh", "-c", "echo easy > bench.txt; echo ok > run.log; touch .git; "
                   "echo verdict >&3; cat bench.txt"], cwd=view, timeout=30,
                  result_channel=True, artefacts=("*.log", ".git"),
                  readonly_inside=("bench.txt",))
out["view"] = {**summary(res), "result": (res.result or b"").decode(),
               "files": sorted(p.name for p in view.iterdir()),
               "bench": (view / "bench.txt").read_text()}
print(json.dumps(out))
